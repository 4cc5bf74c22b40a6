#include <cstdio>

#include "migrate/commands.h"

namespace pghandoff::migrate {

int runVerify(const Args& /*args*/) {
  std::fprintf(stderr, "pghandoff verify: not built yet (issue 4)\n");
  return 2;
}

}  // namespace pghandoff::migrate
