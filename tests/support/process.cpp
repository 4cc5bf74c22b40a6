#include "tests/support/process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <utility>

extern char** environ;

namespace pghandoff::test {
namespace {

using Clock = std::chrono::steady_clock;

std::string errnoText(const std::string& what) {
  return what + ": " + std::strerror(errno);
}

// Writing a test's stdin to a child that already exited must be an EPIPE, not
// a SIGPIPE that kills the whole test binary. Children get SIG_DFL back.
void ignoreSigpipeOnce() {
  static std::once_flag once;
  std::call_once(once, [] { ::signal(SIGPIPE, SIG_IGN); });
}

int pidfdOpen(pid_t pid) {
#ifdef SYS_pidfd_open
  const long fd = ::syscall(SYS_pidfd_open, pid, 0);
  return fd < 0 ? -1 : static_cast<int>(fd);
#else
  (void)pid;
  return -1;
#endif
}

int decodeStatus(int status) {
  if (WIFEXITED(status)) {
    return WEXITSTATUS(status);
  }
  if (WIFSIGNALED(status)) {
    return 128 + WTERMSIG(status);
  }
  return -1;
}

struct UserIds {
  uid_t uid;
  gid_t gid;
};

UserIds lookupUser(const std::string& user) {
  std::array<char, 4096> buf{};
  passwd pw{};
  passwd* found = nullptr;
  if (::getpwnam_r(user.c_str(), &pw, buf.data(), buf.size(), &found) != 0 || found == nullptr) {
    throw std::runtime_error("unknown OS user '" + user + "'");
  }
  return {pw.pw_uid, pw.pw_gid};
}

// Everything the child needs, prepared before fork(): between fork() and
// exec() only async-signal-safe calls are allowed (the test may have threads).
struct ExecPlan {
  std::string path;
  std::vector<std::string> argvStore;
  std::vector<std::string> envStore;
  std::vector<char*> argv;
  std::vector<char*> envp;
  std::string cwd;
  std::optional<UserIds> user;
  std::string execError;

  ExecPlan(const std::vector<std::string>& args, const std::map<std::string, std::string>& extraEnv,
           std::string dir, const std::string& asUser)
      : argvStore(args), cwd(std::move(dir)) {
    if (args.empty()) {
      throw std::runtime_error("run: empty argv");
    }
    std::map<std::string, std::string> env;
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
      const std::string kv(*e);
      const auto eq = kv.find('=');
      if (eq != std::string::npos) {
        env[kv.substr(0, eq)] = kv.substr(eq + 1);
      }
    }
    for (const auto& [k, v] : extraEnv) {
      env[k] = v;
    }
    for (const auto& [k, v] : env) {
      envStore.push_back(k + "=" + v);
    }
    for (auto& s : argvStore) {
      argv.push_back(s.data());
    }
    argv.push_back(nullptr);
    for (auto& s : envStore) {
      envp.push_back(s.data());
    }
    envp.push_back(nullptr);
    path = resolve(args[0], env.count("PATH") != 0U ? env["PATH"] : "/usr/bin:/bin");
    if (!asUser.empty()) {
      if (!isRoot()) {
        throw std::runtime_error("run: asUser needs root");
      }
      user = lookupUser(asUser);
    }
    execError = "exec failed: " + args[0] + "\n";
  }

  static std::string resolve(const std::string& name, const std::string& pathVar) {
    if (name.find('/') != std::string::npos) {
      return name;
    }
    std::stringstream ss(pathVar);
    std::string dir;
    while (std::getline(ss, dir, ':')) {
      const std::string candidate = (dir.empty() ? "." : dir) + "/" + name;
      if (::access(candidate.c_str(), X_OK) == 0) {
        return candidate;
      }
    }
    return name;
  }

  // In the child. Never returns.
  [[noreturn]] void exec(pid_t parent) const {
    ::setpgid(0, 0);
    ::signal(SIGPIPE, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    ::sigprocmask(SIG_SETMASK, &none, nullptr);
    if (!cwd.empty() && ::chdir(cwd.c_str()) != 0) {
      ::_exit(127);
    }
    if (user) {
      if (::setgroups(0, nullptr) != 0 || ::setgid(user->gid) != 0 || ::setuid(user->uid) != 0) {
        ::_exit(127);
      }
    }
    // After setuid(), which clears it. If the parent died before prctl(),
    // we were already reparented.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) {
      ::_exit(127);
    }
    ::execve(path.c_str(), argv.data(), envp.data());
    const ssize_t ignored = ::write(STDERR_FILENO, execError.data(), execError.size());
    (void)ignored;
    ::_exit(127);
  }
};

class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { close(); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  [[nodiscard]] int get() const { return fd_; }
  void close() {
    if (fd_ >= 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  void reset(int fd) {
    close();
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

void makePipe(Fd& readEnd, Fd& writeEnd) {
  std::array<int, 2> fds{};
  if (::pipe2(fds.data(), O_CLOEXEC) != 0) {
    throw std::runtime_error(errnoText("pipe2"));
  }
  readEnd.reset(fds[0]);
  writeEnd.reset(fds[1]);
}

// One read() after poll() reported the fd ready (so it cannot block); false
// once the pipe reached EOF or failed.
bool readSome(int fd, std::string& into) {
  std::array<char, 65536> buf{};
  ssize_t n = 0;
  do {
    n = ::read(fd, buf.data(), buf.size());
  } while (n < 0 && errno == EINTR);
  if (n > 0) {
    into.append(buf.data(), static_cast<std::size_t>(n));
    return true;
  }
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

void drainNonBlocking(Fd& fd, std::string& into) {
  if (fd.get() < 0) {
    return;
  }
  ::fcntl(fd.get(), F_SETFL, ::fcntl(fd.get(), F_GETFL) | O_NONBLOCK);
  std::array<char, 65536> buf{};
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf.data(), buf.size());
    if (n > 0) {
      into.append(buf.data(), static_cast<std::size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) {
      continue;
    }
    break;
  }
  fd.close();
}

std::mutex& cleanupMutex() {
  static std::mutex m;
  return m;
}

// Directories removed when the test binary exits normally.
struct AtExitDirs {
  std::vector<std::string> dirs;
  ~AtExitDirs() {
    for (const auto& d : dirs) {
      std::error_code ec;
      std::filesystem::remove_all(d, ec);
    }
  }
};

AtExitDirs& atExitDirs() {
  static AtExitDirs dirs;
  return dirs;
}

}  // namespace

bool isRoot() {
  return ::geteuid() == 0;
}

bool processAlive(int pid) {
  if (pid <= 0) {
    return false;
  }
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!in || !std::getline(in, stat)) {
    return false;
  }
  // The state letter follows the last ')', since comm may contain anything.
  const auto close = stat.rfind(')');
  const char state = close != std::string::npos && close + 2 < stat.size() ? stat[close + 2] : '?';
  return state != 'Z' && state != 'X';
}

ProcessResult run(std::vector<std::string> argv, std::map<std::string, std::string> extraEnv,
                  std::chrono::milliseconds timeout, std::string stdinData) {
  RunOptions options;
  options.argv = std::move(argv);
  options.extraEnv = std::move(extraEnv);
  options.timeout = timeout;
  options.stdinData = std::move(stdinData);
  return run(options);
}

ProcessResult run(const RunOptions& options) {
  ignoreSigpipeOnce();
  const ExecPlan plan(options.argv, options.extraEnv, options.cwd, options.asUser);

  Fd outRead;
  Fd outWrite;
  Fd errRead;
  Fd errWrite;
  Fd inRead;
  Fd inWrite;
  makePipe(outRead, outWrite);
  makePipe(errRead, errWrite);
  makePipe(inRead, inWrite);

  const pid_t self = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    throw std::runtime_error(errnoText("fork"));
  }
  if (pid == 0) {
    // dup2 clears O_CLOEXEC on the targets; the originals close at exec.
    ::dup2(inRead.get(), STDIN_FILENO);
    ::dup2(outWrite.get(), STDOUT_FILENO);
    ::dup2(errWrite.get(), STDERR_FILENO);
    plan.exec(self);
  }
  // Also from the parent, so a kill() of the group cannot race the child's
  // own setpgid().
  ::setpgid(pid, pid);
  outWrite.close();
  errWrite.close();
  inRead.close();

  ProcessResult result;
  Fd pidfd(pidfdOpen(pid));
  std::size_t written = 0;
  if (options.stdinData.empty()) {
    inWrite.close();
  } else {
    ::fcntl(inWrite.get(), F_SETFL, ::fcntl(inWrite.get(), F_GETFL) | O_NONBLOCK);
  }

  const auto deadline = Clock::now() + options.timeout;
  bool exited = false;
  int status = 0;
  while (!exited) {
    const auto now = Clock::now();
    if (now >= deadline) {
      result.timedOut = true;
      ::kill(-pid, SIGKILL);
      ::kill(pid, SIGKILL);
      break;
    }
    std::vector<pollfd> fds;
    auto add = [&fds](int fd, short events) {
      if (fd >= 0) {
        fds.push_back(pollfd{fd, events, 0});
      }
    };
    add(outRead.get(), POLLIN);
    add(errRead.get(), POLLIN);
    add(inWrite.get(), POLLOUT);
    add(pidfd.get(), POLLIN);
    auto waitMs = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count() + 1;
    if (pidfd.get() < 0) {
      waitMs = std::min<long long>(waitMs, 10);  // no pidfd: poll waitpid()
    }
    const int n = ::poll(fds.data(), fds.size(), static_cast<int>(waitMs));
    if (n < 0 && errno != EINTR) {
      throw std::runtime_error(errnoText("poll"));
    }
    for (const auto& p : fds) {
      if (p.revents == 0) {
        continue;
      }
      if (p.fd == outRead.get()) {
        if (!readSome(p.fd, result.out)) {
          outRead.close();
        }
      } else if (p.fd == errRead.get()) {
        if (!readSome(p.fd, result.err)) {
          errRead.close();
        }
      } else if (p.fd == inWrite.get()) {
        const ssize_t w =
            ::write(p.fd, options.stdinData.data() + written, options.stdinData.size() - written);
        if (w > 0) {
          written += static_cast<std::size_t>(w);
        }
        if ((w < 0 && errno != EAGAIN && errno != EINTR) || written == options.stdinData.size()) {
          inWrite.close();
        }
      } else if (p.fd == pidfd.get()) {
        exited = true;
      }
    }
    if (pidfd.get() < 0 && ::waitpid(pid, &status, WNOHANG) == pid) {
      result.exitCode = decodeStatus(status);
      drainNonBlocking(outRead, result.out);
      drainNonBlocking(errRead, result.err);
      return result;
    }
  }
  // The child is gone (or being killed): everything it wrote is in the pipes
  // now. Do not wait for EOF, a daemonised grandchild may hold them open.
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  result.exitCode = decodeStatus(status);
  drainNonBlocking(outRead, result.out);
  drainNonBlocking(errRead, result.err);
  return result;
}

// ---- Process ----------------------------------------------------------------

Process::~Process() {
  if (pid_ > 0) {
    terminate();
  }
  reset();
}

Process::Process(Process&& other) noexcept
    : pid_(other.pid_), pidfd_(other.pidfd_), exitCode_(other.exitCode_) {
  other.pid_ = -1;
  other.pidfd_ = -1;
  other.exitCode_.reset();
}

Process& Process::operator=(Process&& other) noexcept {
  if (this != &other) {
    if (pid_ > 0) {
      terminate();
    }
    reset();
    pid_ = other.pid_;
    pidfd_ = other.pidfd_;
    exitCode_ = other.exitCode_;
    other.pid_ = -1;
    other.pidfd_ = -1;
    other.exitCode_.reset();
  }
  return *this;
}

void Process::reset() noexcept {
  if (pidfd_ >= 0) {
    ::close(pidfd_);
    pidfd_ = -1;
  }
}

void Process::start(const std::vector<std::string>& argv,
                    const std::map<std::string, std::string>& extraEnv, const std::string& logFile,
                    const std::string& asUser) {
  if (pid_ > 0 && running()) {
    throw std::runtime_error("Process::start: already running");
  }
  ignoreSigpipeOnce();
  reset();
  exitCode_.reset();
  pid_ = -1;
  const ExecPlan plan(argv, extraEnv, {}, asUser);
  Fd log;
  if (!logFile.empty()) {
    log.reset(::open(logFile.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
    if (log.get() < 0) {
      throw std::runtime_error(errnoText("open " + logFile));
    }
  }
  const pid_t self = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    throw std::runtime_error(errnoText("fork"));
  }
  if (pid == 0) {
    const int devNull = ::open("/dev/null", O_RDONLY);
    if (devNull >= 0) {
      ::dup2(devNull, STDIN_FILENO);
    }
    if (log.get() >= 0) {
      ::dup2(log.get(), STDOUT_FILENO);
      ::dup2(log.get(), STDERR_FILENO);
    }
    plan.exec(self);
  }
  ::setpgid(pid, pid);
  pid_ = pid;
  pidfd_ = pidfdOpen(pid);
}

bool Process::running() {
  if (pid_ <= 0 || exitCode_) {
    return false;
  }
  int status = 0;
  const pid_t r = ::waitpid(pid_, &status, WNOHANG);
  if (r == pid_) {
    exitCode_ = decodeStatus(status);
    return false;
  }
  return r == 0;
}

bool Process::signal(int sig) {
  if (!running()) {
    return false;
  }
  return ::kill(pid_, sig) == 0;
}

int Process::wait(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) {
    return exitCode_.value_or(kStillRunning);
  }
  if (exitCode_) {
    return *exitCode_;
  }
  if (pidfd_ >= 0) {
    const auto deadline = Clock::now() + timeout;
    for (;;) {
      pollfd p{pidfd_, POLLIN, 0};
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
      const int n = ::poll(&p, 1, static_cast<int>(std::max<long long>(left, 0)));
      if (n > 0) {
        break;
      }
      if (n == 0 || (n < 0 && errno != EINTR)) {
        return running() ? kStillRunning : exitCode_.value_or(kStillRunning);
      }
    }
    int status = 0;
    while (::waitpid(pid_, &status, 0) < 0) {
      if (errno != EINTR) {
        return exitCode_.value_or(kStillRunning);
      }
    }
    exitCode_ = decodeStatus(status);
    return *exitCode_;
  }
  waitFor([this] { return !running(); }, timeout, 5ms);
  return exitCode_.value_or(kStillRunning);
}

int Process::terminate(std::chrono::milliseconds grace) {
  if (pid_ <= 0) {
    return exitCode_.value_or(kStillRunning);
  }
  if (running()) {
    ::kill(pid_, SIGTERM);
    if (wait(grace) == kStillRunning) {
      ::kill(-pid_, SIGKILL);
      ::kill(pid_, SIGKILL);
      wait(10s);
    }
  }
  // Leftover children of a process that exited on its own.
  ::kill(-pid_, SIGKILL);
  return exitCode_.value_or(kStillRunning);
}

// ---- helpers ----------------------------------------------------------------

bool waitFor(const std::function<bool()>& cond, std::chrono::milliseconds deadline,
             std::chrono::milliseconds interval) {
  const auto end = Clock::now() + deadline;
  for (;;) {
    if (cond()) {
      return true;
    }
    if (Clock::now() >= end) {
      return false;
    }
    std::this_thread::sleep_for(std::min<Clock::duration>(interval, end - Clock::now()));
  }
}

uint16_t freePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    throw std::runtime_error(errnoText("socket"));
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  socklen_t len = sizeof(addr);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    const std::string msg = errnoText("bind 127.0.0.1:0");
    ::close(fd);
    throw std::runtime_error(msg);
  }
  ::close(fd);
  return ntohs(addr.sin_port);
}

TempDir::TempDir(const std::string& prefix) : path_(makeTempDir(prefix)) {}

TempDir::~TempDir() {
  if (!path_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
}

std::string TempDir::release() {
  return std::exchange(path_, {});
}

std::string tempRoot() {
  const char* env = std::getenv("PGHANDOFF_TEST_TMPDIR");
  return env != nullptr && *env != '\0' ? env : "/tmp";
}

std::string makeTempDir(const std::string& prefix, bool removeAtExit) {
  std::string tmpl = tempRoot() + "/" + prefix + "-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) {
    throw std::runtime_error(errnoText("mkdtemp " + tmpl));
  }
  if (removeAtExit) {
    const std::lock_guard lock(cleanupMutex());
    atExitDirs().dirs.push_back(tmpl);
  }
  return tmpl;
}

void markOwned(const std::string& dir) {
  writeFile(dir + "/.owner.pid", std::to_string(::getpid()) + "\n");
}

void unmarkOwned(const std::string& dir) {
  ::unlink((dir + "/.owner.pid").c_str());
}

void reapAbandonedDirs(const std::function<void(const std::string&)>& beforeRemove) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(tempRoot(), ec)) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("pghandoff-", 0) != 0) {
      continue;
    }
    std::ifstream in(entry.path() / ".owner.pid");
    int owner = 0;
    if (!(in >> owner) || owner <= 0 || processAlive(owner)) {
      continue;
    }
    if (beforeRemove) {
      beforeRemove(entry.path().string());
    }
    std::filesystem::remove_all(entry.path(), ec);
  }
}

std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    throw std::runtime_error("cannot read " + path);
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string tailFile(const std::string& path, std::size_t maxBytes) {
  try {
    std::string all = readFile(path);
    if (all.size() > maxBytes) {
      all.erase(0, all.size() - maxBytes);
    }
    return all;
  } catch (const std::exception&) {
    return {};
  }
}

void writeFile(const std::string& path, const std::string& content, unsigned mode) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, static_cast<mode_t>(mode)));
  if (fd.get() < 0) {
    throw std::runtime_error(errnoText("open " + path));
  }
  ::fchmod(fd.get(), static_cast<mode_t>(mode));
  std::size_t off = 0;
  while (off < content.size()) {
    const ssize_t n = ::write(fd.get(), content.data() + off, content.size() - off);
    if (n < 0) {
      if (errno == EINTR) {
        continue;
      }
      throw std::runtime_error(errnoText("write " + path));
    }
    off += static_cast<std::size_t>(n);
  }
}

void chownToUser(const std::string& path, const std::string& user) {
  if (!isRoot()) {
    return;
  }
  const UserIds ids = lookupUser(user);
  if (::chown(path.c_str(), ids.uid, ids.gid) != 0) {
    throw std::runtime_error(errnoText("chown " + path));
  }
}

std::string randomHex(std::size_t length) {
  std::ifstream in("/dev/urandom", std::ios::binary);
  std::string bytes((length + 1) / 2, '\0');
  if (!in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()))) {
    throw std::runtime_error("cannot read /dev/urandom");
  }
  static constexpr std::string_view kHex = "0123456789abcdef";
  std::string out;
  for (const char c : bytes) {
    const auto b = static_cast<unsigned char>(c);
    out.push_back(kHex[b >> 4U]);
    out.push_back(kHex[b & 0xFU]);
  }
  out.resize(length);
  return out;
}

}  // namespace pghandoff::test
