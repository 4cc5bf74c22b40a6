// Helpers shared by the migration commands: options and the config file.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "config/config.h"

namespace pghandoff::migrate {

// "--name value" or "--name=value"; "" when absent.
std::string optionValue(const std::vector<std::string>& args, const std::string& name);
bool hasFlag(const std::vector<std::string>& args, const std::string& name);
// Loads --config (required); prints the errors (key and line) to stderr
// prefixed with "pghandoff <cmd>: " and returns nullopt.
std::optional<config::Config> loadConfigFor(const std::vector<std::string>& args,
                                            const std::string& cmd);

}  // namespace pghandoff::migrate
