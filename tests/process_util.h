// Worker processes of the `tempo` binary under test.
#pragma once

#include "eval/subprocess.h"

namespace tempo::testutil {

using tempo::read_text;
using tempo::spawn;
using tempo::wait_exit;

class WorkerProcess : public tempo::WorkerProcess {
 public:
  WorkerProcess(const std::string& dir, const std::string& name, std::vector<std::string> extra = {}, int port = 0)
      : tempo::WorkerProcess(TEMPO_BINARY, dir, name, std::move(extra), port) {}
};

}  // namespace tempo::testutil
