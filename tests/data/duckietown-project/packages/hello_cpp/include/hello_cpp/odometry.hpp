#pragma once
#include <string>
#include <vector>

namespace hello_cpp {
// Dead reckoning from wheel encoder ticks; enough template code to make the compiler work.
struct Pose {
  double x = 0, y = 0, theta = 0;
};
Pose integrate(const std::vector<std::pair<int, int>>& ticks, double wheel_radius,
               double baseline, int ticks_per_rev);
std::string describe(const Pose& p);
}  // namespace hello_cpp
