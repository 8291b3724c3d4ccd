#include <iostream>
#include <vector>

#include "hello_cpp/odometry.hpp"

int main() {
  std::vector<std::pair<int, int>> ticks;
  for (int i = 0; i < 100; ++i) ticks.emplace_back(10, 12);
  const auto pose = hello_cpp::integrate(ticks, 0.0318, 0.1, 135);
  std::cout << "hello_node: " << hello_cpp::describe(pose) << std::endl;
  return 0;
}
