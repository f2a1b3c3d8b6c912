// The tests link both sides, as the `tempo` binary does: "local:N" workers
// are in-process LocalWorkers (eval/wiring.h).
#include <gtest/gtest.h>

#include "eval/wiring.h"

int main(int argc, char** argv) {
  testing::InitGoogleTest(&argc, argv);
  tempo::install_local_workers();
  return RUN_ALL_TESTS();
}
