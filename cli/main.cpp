#include <cstdio>
int main() { std::puts("pghandoff"); return 0; }
