#include "migrate/cli_support.h"

#include <cstdio>

namespace pghandoff::migrate {

std::string optionValue(const std::vector<std::string>& args, const std::string& name) {
  for (std::size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == name) return args[i + 1];
  }
  for (const auto& a : args) {
    if (a.rfind(name + "=", 0) == 0) return a.substr(name.size() + 1);
  }
  return {};
}

bool hasFlag(const std::vector<std::string>& args, const std::string& name) {
  for (const auto& a : args) {
    if (a == name) return true;
  }
  return false;
}

std::optional<config::Config> loadConfigFor(const std::vector<std::string>& args,
                                            const std::string& cmd) {
  const std::string path = optionValue(args, "--config");
  if (path.empty()) {
    std::fprintf(stderr, "pghandoff %s: --config FILE is required\n", cmd.c_str());
    return std::nullopt;
  }
  auto loaded = config::loadConfigFile(path, config::processEnv());
  if (!loaded.config) {
    std::fprintf(stderr, "pghandoff %s: ", cmd.c_str());
    std::fputs(config::formatErrors(loaded, path).c_str(), stderr);
    return std::nullopt;
  }
  return std::move(loaded.config);
}

}  // namespace pghandoff::migrate
