#include <cstdio>

#include "migrate/commands.h"

namespace pghandoff::migrate {

int runCheck(const Args& /*args*/) {
  std::fprintf(stderr, "pghandoff check: not built yet (issue 4)\n");
  return 2;
}

}  // namespace pghandoff::migrate
