// Child processes: `tempo worker` servers on 127.0.0.1 (port chosen by the
// kernel, read back from --port-file) for benchmarks and tests, and any
// command whose exit status and output are checked.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"

#include <cstdio>

namespace tempo {

// Starts argv with stdout and stderr appended to `log`; returns the pid.
inline pid_t spawn(const std::vector<std::string>& argv, const std::string& log) {
  pid_t pid = fork();
  if (pid < 0) throw Error("fork failed");
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the parent
    int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
      close(fd);
    }
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execv(args[0], args.data());
    _exit(127);
  }
  return pid;
}

// Exit status of pid (waits at most `seconds`, then kills it and fails).
inline int wait_exit(pid_t pid, double seconds) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > end) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      throw Error("process " + std::to_string(pid) + " did not finish in time");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

inline std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class WorkerProcess {
 public:
  // Starts `binary worker` with its log and port file in dir.
  WorkerProcess(const std::string& binary, const std::string& dir, const std::string& name,
                std::vector<std::string> extra = {}, int port = 0)
      : log_(dir + "/" + name + ".log"), port_file_(dir + "/" + name + ".port") {
    std::vector<std::string> argv = {binary, "worker", "--listen", "127.0.0.1:" + std::to_string(port),
                                     "--port-file", port_file_};
    if (std::find(extra.begin(), extra.end(), "--threads") == extra.end()) extra.insert(extra.end(), {"--threads", "1"});
    argv.insert(argv.end(), extra.begin(), extra.end());
    std::remove(port_file_.c_str());
    pid_ = spawn(argv, log_);
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (port_ == 0) {
      std::ifstream in(port_file_);
      if (in >> port_) break;
      int status;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        throw Error("worker exited at start: " + read_text(log_));
      }
      if (std::chrono::steady_clock::now() > end) throw Error("worker did not start: " + read_text(log_));
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  ~WorkerProcess() { stop(SIGKILL); }
  WorkerProcess(const WorkerProcess&) = delete;
  WorkerProcess& operator=(const WorkerProcess&) = delete;

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }
  pid_t pid() const { return pid_; }
  std::string log() const { return read_text(log_); }
  bool alive() const { return pid_ > 0 && waitpid(pid_, nullptr, WNOHANG) == 0; }
  // Sends sig; for a terminating signal, reaps the process.
  void stop(int sig) {
    if (pid_ <= 0) return;
    kill(pid_, sig);
    if (sig == SIGSTOP || sig == SIGCONT) return;
    if (sig != SIGKILL) {
      try {
        wait_exit(pid_, 10);
      } catch (...) {
      }
    } else {
      waitpid(pid_, nullptr, 0);
    }
    pid_ = -1;
  }

 private:
  std::string log_, port_file_;
  pid_t pid_ = -1;
  int port_ = 0;
};

}  // namespace tempo
