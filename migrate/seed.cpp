#include <cstdio>

#include "migrate/commands.h"

namespace pghandoff::migrate {

int runSeed(const Args& /*args*/) {
  std::fprintf(stderr, "pghandoff seed: not built yet (issue 4)\n");
  return 2;
}

}  // namespace pghandoff::migrate
