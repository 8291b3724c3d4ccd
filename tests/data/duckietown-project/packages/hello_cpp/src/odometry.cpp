#include "hello_cpp/odometry.hpp"

#include <cmath>
#include <map>
#include <sstream>

namespace hello_cpp {
Pose integrate(const std::vector<std::pair<int, int>>& ticks, double wheel_radius,
               double baseline, int ticks_per_rev) {
  Pose p;
  const double per_tick = 2 * M_PI * wheel_radius / ticks_per_rev;
  std::map<int, int> histogram;
  for (const auto& [left, right] : ticks) {
    const double dl = left * per_tick, dr = right * per_tick;
    const double d = (dl + dr) / 2, dtheta = (dr - dl) / baseline;
    p.x += d * std::cos(p.theta + dtheta / 2);
    p.y += d * std::sin(p.theta + dtheta / 2);
    p.theta += dtheta;
    ++histogram[left - right];
  }
  return p;
}

std::string describe(const Pose& p) {
  std::ostringstream out;
  out.precision(3);
  out << std::fixed << "x=" << p.x << " y=" << p.y << " theta=" << p.theta;
  return out.str();
}
}  // namespace hello_cpp
