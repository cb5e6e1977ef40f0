// Single-thread encode throughput of llmq's tokenizer on the lines of real text files
// Prints two rows for bench/tokenizer.sh to put beside the peers: "llmq-cold" (the first
// pass, the per-thread piece cache empty at the start) and "llmq" (best of 3 passes, cache
// warm, as in a long data-prepare run): "name MB/s tokens".
// usage: bench_tokenizer TOKENIZER FILE...
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: bench_tokenizer TOKENIZER FILE...\n");
    return 2;
  }
  auto tok = llmq::tokenizer_load(argv[1]);
  std::vector<std::string> lines;
  size_t bytes = 0;
  for (int i = 2; i < argc; i++) {
    std::ifstream in(argv[i]);
    std::string l;
    while (std::getline(in, l))
      if (!l.empty()) bytes += l.size(), lines.push_back(l);
  }
  double best = 1e30, first = 0;
  size_t toks = 0;
  for (int rep = 0; rep < 3; rep++) {
    auto t0 = std::chrono::steady_clock::now();
    toks = 0;
    for (const auto& l : lines) toks += tok->encode(l, false).size();
    double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (rep == 0) first = t;
    best = std::min(best, t);
  }
  std::printf("llmq-cold %.2f %zu\nllmq %.2f %zu\n", bytes / 1e6 / first, toks, bytes / 1e6 / best, toks);
  return 0;
}
