// llmq: one program for training, quantizing and running Llama-family models.
#include <cstdio>
#include <exception>

#include "cli/common.h"
#include "core/error.h"
#include "ops/ops.h"

int main(int argc, char** argv) {
  CLI::App app{"llmq: train, quantize and run Llama-family models on the CPU", "llmq"};
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("-t,--threads", threads, "worker threads (default: all cores)")->check(CLI::NonNegativeNumber);
  app.add_flag("--mmap", llmq::cli::g_mmap,
               "map weight files instead of reading them into memory (faster start, slower decode here)");
  app.set_version_flag("--version", "llmq 0.1.0");
  llmq::cli::register_info(app);
  llmq::cli::register_init(app);
  llmq::cli::register_generate(app);
  llmq::cli::register_eval(app);
  llmq::cli::register_bench(app);
  llmq::cli::register_tokenizer(app);
  llmq::cli::register_data(app);
  llmq::cli::register_train(app);
  llmq::cli::register_report(app);
  app.parse_complete_callback([&] { llmq::ops_set_threads(threads); });
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const llmq::Error& e) {
    std::fprintf(stderr, "llmq: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "llmq: error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llmq: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
