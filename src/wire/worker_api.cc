#include "wire/worker_api.h"

namespace tempo {

std::string product_shape(ProductOp op, int64_t xr, int64_t xc, int64_t yr, int64_t yc, int64_t groups,
                          int64_t& rows, int64_t& cols) {
  if (groups < 1) return "the number of groups must be at least 1, got " + std::to_string(groups);
  if (xr % groups != 0 || yr % groups != 0)
    return "operands of " + std::to_string(xr) + " and " + std::to_string(yr) + " rows do not split into " +
           std::to_string(groups) + " equal groups";
  const int64_t xb = xr / groups, yb = yr / groups;  // rows of one block
  int64_t inner_x, inner_y;
  switch (op) {
    case ProductOp::kNT: inner_x = xc; inner_y = yc; rows = xb; cols = yb; break;
    case ProductOp::kNN: inner_x = xc; inner_y = yb; rows = xb; cols = yc; break;
    case ProductOp::kTN: inner_x = xb; inner_y = yb; rows = xc; cols = yc; break;
    default: return "unknown product operation " + std::to_string(static_cast<int>(op));
  }
  if (inner_x != inner_y)
    return "operand shapes do not match: inner dimensions " + std::to_string(inner_x) + " and " +
           std::to_string(inner_y);
  rows *= groups;
  return {};
}

}  // namespace tempo
