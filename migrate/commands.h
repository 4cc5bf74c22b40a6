// The migration subcommands of SPEC §3. Each takes the arguments after its
// name and returns the process exit code; main() only dispatches.
#pragma once

#include <string>
#include <vector>

namespace pghandoff::migrate {

using Args = std::vector<std::string>;

// check: exit 0 = go, 1 = blockers, 2 = could not run.
int runCheck(const Args& args);
// seed: exit 0 = seeded and the proxy in mirror, 1 = refused (a blocker), 2 = failed.
int runSeed(const Args& args);
// verify: exit 0 = identical, 1 = differences, 2 = could not run.
int runVerify(const Args& args);

}  // namespace pghandoff::migrate
