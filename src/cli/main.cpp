// llmq: one program for training, quantizing and running Llama-family models.
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <omp.h>
#include <algorithm>
#include <exception>
#include <stdexcept>
#include <system_error>
#include <functional>
#include <string>
#include <vector>

#include "cli/common.h"
#include "core/error.h"
#include "dist/comm.h"
#include "ops/ops.h"

int main(int argc, char** argv) {
  // A file-size limit (ulimit -f) or a full quota makes write() fail with EFBIG, which every
  // writer reports and cleans up after, instead of the default SIGXFSZ that kills the process
  // and leaves temporary files behind.
  std::signal(SIGXFSZ, SIG_IGN);
  CLI::App app{"llmq: train, quantize and run Llama-family models on the CPU", "llmq"};
  app.require_subcommand(1);
  // -t/--threads and --mmap are accepted after the subcommand too (`llmq generate ... -t 1`).
  app.fallthrough();
  int threads = 0;
  app.add_option("-t,--threads", threads,
                 "worker threads (default: one per core, fastest on an idle machine; a note says when the machine "
                 "is busy, where fewer threads can be much faster); before or after the command")
      ->check(llmq::cli::kNonNegative)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
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
  llmq::cli::register_finetune(app);
  llmq::cli::register_qat(app);
  llmq::cli::register_merge(app);
  llmq::cli::register_report(app);
  llmq::cli::register_quantize(app);
  llmq::cli::register_export(app);
  llmq::cli::register_plan(app);
  llmq::cli::register_serve(app);
  app.parse_complete_callback([&] {
    // Under mpirun the cores are shared by the node's ranks unless --threads says otherwise.
    const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    if (threads == 0 && local && std::atoi(local) > 1)
      threads = std::max(1, omp_get_num_procs() / std::atoi(local));
    llmq::ops_set_threads(threads);
    if (threads == 0)
      for (const char* c : {"generate", "bench", "eval", "train"})
        if (app.got_subcommand(c)) llmq::cli::warn_if_busy();
  });
  try {
    std::vector<std::string> args(argv + 1, argv + argc);
    std::function<bool(CLI::App*, const std::string&)> known = [&](CLI::App* a, const std::string& key) {
      if (a->get_option_no_throw("--" + key)) return true;
      for (CLI::App* sub : a->get_subcommands([](CLI::App*) { return true; }))
        if (known(sub, key)) return true;
      return false;
    };
    args = llmq::cli::expand_options_files(args, [&](const std::string& key) { return known(&app, key); });
    std::reverse(args.begin(), args.end());  // CLI11 takes the vector last-first
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    // --help and --version print and exit 0; every other parse error is one line and exit
    // status 1, as the README promises for all errors.
    if (e.get_exit_code() == 0) return app.exit(e);
    std::fprintf(stderr, "llmq: error: %s (see --help)\n", e.what());
    return 1;
  } catch (const std::system_error& e) {
    // fmt's "cannot write to file: ..." is a failed write of the command's own output (stdout
    // to a full disk or a closed pipe); every file llmq writes names itself in its errors.
    const std::string what = e.what();
    if (what.rfind("cannot write to file", 0) == 0)
      std::fprintf(stderr, "llmq: error: writing to standard output failed: %s\n", e.code().message().c_str());
    else
      std::fprintf(stderr, "llmq: error: %s\n", e.what());
    llmq::dist::abort_job(1);
    return 1;
  } catch (const std::length_error& e) {  // a size beyond what a container can hold
    std::fprintf(stderr, "llmq: error: a size is too large to allocate (%s); check the sizes in the input\n", e.what());
    llmq::dist::abort_job(1);
    return 1;
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "llmq: error: out of memory\n");
    llmq::dist::abort_job(1);  // the other ranks of a job stop too instead of waiting for this one
    return 1;
  } catch (const std::exception& e) {
    const char* rank = std::getenv("OMPI_COMM_WORLD_RANK");  // which rank of an mpirun job
    if (rank) std::fprintf(stderr, "llmq: error (rank %s): %s\n", rank, e.what());
    else std::fprintf(stderr, "llmq: error: %s\n", e.what());
    llmq::dist::abort_job(1);
    return 1;
  }
  return llmq::cli::g_exit_code;  // 0, or a command's own status (train stopped by a signal: 130/143)
}
