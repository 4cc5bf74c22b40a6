// Corpus replay driver: runs a libFuzzer target's LLVMFuzzerTestOneInput on
// every file of the given corpus directories (or on given files), without
// libFuzzer, so the committed corpora run as ordinary CTest tests built with
// any compiler. A target reports a violated invariant with __builtin_trap(),
// which kills this process and fails the test.
//
// Usage: fuzz_replay_<target> <corpus dir or file>...
// Exit status 0 when every input ran; 2 on a usage error, an unreadable input
// or an empty corpus (a replay of nothing must not pass).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace {

namespace fs = std::filesystem;

bool replayFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    return false;
  }
  const std::vector<char> content((std::istreambuf_iterator<char>(in)),
                                  std::istreambuf_iterator<char>());
  if (in.bad()) {
    std::fprintf(stderr, "cannot read %s\n", path.c_str());
    return false;
  }
  // An allocation of exactly the input's size, as libFuzzer gives, so a
  // sanitizer build reports any read past the end (never null, even empty).
  const std::size_t size = content.size();
  auto data = std::make_unique<std::uint8_t[]>(size);
  std::copy(content.begin(), content.end(), data.get());
  // Named on stderr first, so a trap's output says which input it was.
  std::fprintf(stderr, "running %s (%zu bytes)\n", path.c_str(), size);
  (void)LLVMFuzzerTestOneInput(data.get(), size);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s <corpus dir or file>...\n", argv[0]);
    return 2;
  }
  std::size_t replayed = 0;
  for (int i = 1; i < argc; ++i) {
    const fs::path arg(argv[i]);
    std::error_code ec;
    std::vector<fs::path> files;
    if (fs::is_directory(arg, ec)) {
      for (const auto& entry : fs::directory_iterator(arg, ec)) {
        if (entry.is_regular_file()) files.push_back(entry.path());
      }
      if (ec) {
        std::fprintf(stderr, "cannot list %s: %s\n", arg.c_str(), ec.message().c_str());
        return 2;
      }
      // Directory order is unspecified: sort, so every run replays the same way.
      std::sort(files.begin(), files.end());
    } else if (fs::is_regular_file(arg, ec)) {
      files.push_back(arg);
    } else {
      std::fprintf(stderr, "no such corpus: %s\n", arg.c_str());
      return 2;
    }
    for (const auto& f : files) {
      if (!replayFile(f)) return 2;
      ++replayed;
    }
  }
  std::printf("replayed %zu inputs\n", replayed);
  if (replayed == 0) {
    std::fprintf(stderr, "empty corpus: nothing was replayed\n");
    return 2;
  }
  return 0;
}
