// Joins the two sides in a binary that links both (the `tempo` binary, the
// tests): the master's "local:N" workers become in-process LocalWorkers on
// the backend --local-backend names.
#pragma once

namespace tempo {

void install_local_workers();

}  // namespace tempo
