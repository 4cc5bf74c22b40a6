#pragma once

// Child processes for integration tests: run-to-completion commands with
// captured output, long-running children (servers, the proxy), temp dirs and
// poll-with-deadline waiting. POSIX/Linux only.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace pghandoff::test {

using namespace std::chrono_literals;

// Exit codes follow the shell convention: 0..255 from exit(), 128+N when
// killed by signal N, -1 when the process could not be started.
struct ProcessResult {
  int exitCode = -1;
  std::string out;
  std::string err;
  bool timedOut = false;
};

// Everything run() can be asked for; the positional overload covers the
// common case.
struct RunOptions {
  std::vector<std::string> argv;
  std::map<std::string, std::string> extraEnv;  // added to / overriding our environment
  std::chrono::milliseconds timeout = 60s;
  std::string stdinData;
  std::string cwd;     // empty: inherit
  std::string asUser;  // empty: ourselves; else setgid/setuid to that OS user (needs root)
};

// fork/exec argv[0] (searched in PATH), feed stdinData, capture stdout and
// stderr. On timeout the child's whole process group is SIGKILLed and
// timedOut is set. Never throws for a failing command; throws
// std::runtime_error only when fork/pipe themselves fail.
ProcessResult run(std::vector<std::string> argv, std::map<std::string, std::string> extraEnv = {},
                  std::chrono::milliseconds timeout = 60s, std::string stdinData = {});
ProcessResult run(const RunOptions& options);

// A long-running child in its own process group. The destructor terminates
// it: SIGTERM, then SIGKILL to the group after 5 s. Children of run() and
// Process get SIGKILL if the thread that started them dies (PR_SET_PDEATHSIG),
// so a crashed test binary leaves no proxy behind: start long-running
// children from a thread that outlives them (the test's own thread).
class Process {
 public:
  static constexpr int kStillRunning = -1;

  Process() = default;
  ~Process();
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;
  Process(Process&& other) noexcept;
  Process& operator=(Process&& other) noexcept;

  // stdout and stderr are appended to logFile (empty: inherited); stdin is
  // /dev/null. Throws std::runtime_error if already running or fork fails; an
  // exec failure shows up as exit code 127 with the reason in logFile.
  void start(const std::vector<std::string>& argv,
             const std::map<std::string, std::string>& extraEnv = {},
             const std::string& logFile = {}, const std::string& asUser = {});

  [[nodiscard]] pid_t pid() const { return pid_; }
  [[nodiscard]] bool running();
  // kill(pid, sig); false if not running.
  bool signal(int sig);
  // Waits up to timeout for the exit; the exit code (see ProcessResult), or
  // kStillRunning. After an exit, repeated calls return the same code.
  int wait(std::chrono::milliseconds timeout);
  // SIGTERM, wait up to grace, then SIGKILL the process group; the exit code.
  int terminate(std::chrono::milliseconds grace = 5s);
  [[nodiscard]] std::optional<int> exitCode() const { return exitCode_; }

 private:
  void reset() noexcept;

  pid_t pid_ = -1;
  int pidfd_ = -1;
  std::optional<int> exitCode_;
};

// Polls cond() every interval until it is true (returns true) or the deadline
// passes (returns false after one last check).
bool waitFor(const std::function<bool()>& cond, std::chrono::milliseconds deadline,
             std::chrono::milliseconds interval = 20ms);

// A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0). Callers
// must still handle the race with another process taking it.
uint16_t freePort();

// A unique directory <tempRoot()>/<prefix>-XXXXXX, removed with its contents by the
// destructor (unless release()d).
class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "pghandoff-test");
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  [[nodiscard]] const std::string& path() const { return path_; }
  std::string release();

 private:
  std::string path_;
};

// Where temp dirs go: $PGHANDOFF_TEST_TMPDIR if set (e.g. /dev/shm for
// speed), else /tmp.
std::string tempRoot();

// mkdtemp under tempRoot(); the directory is not removed automatically unless
// removeAtExit is set (it is then removed when the test process exits normally).
std::string makeTempDir(const std::string& prefix, bool removeAtExit = false);

// Marks dir as owned by this test process (a .owner.pid file), so that
// reapAbandonedDirs() in a later test binary removes it if we die without
// cleaning up; unmarkOwned() undoes it.
void markOwned(const std::string& dir);
void unmarkOwned(const std::string& dir);
// For each <tempRoot()>/pghandoff-* dir marked by a process that no longer
// exists: beforeRemove(dir) (e.g. stop a server), then remove it.
void reapAbandonedDirs(const std::function<void(const std::string&)>& beforeRemove = {});

// Whole file as a string (throws std::runtime_error if unreadable), and the
// last maxBytes of it ("" if unreadable) for error messages.
std::string readFile(const std::string& path);
std::string tailFile(const std::string& path, std::size_t maxBytes = 4000);
void writeFile(const std::string& path, const std::string& content, unsigned mode = 0644);

// True while pid exists and is not a zombie (orphans may never be reaped in
// a container whose init does not wait()).
[[nodiscard]] bool processAlive(int pid);

// chown path to the OS user (no-op when not root).
void chownToUser(const std::string& path, const std::string& user);
[[nodiscard]] bool isRoot();

// Random lowercase hex string of the given length (from /dev/urandom).
std::string randomHex(std::size_t length);

}  // namespace pghandoff::test
