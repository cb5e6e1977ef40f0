// llmq eval ppl | compare: perplexity of a model, and a quantized model against its base
// (perplexity ratio, KL divergence, top-1 agreement), on a token file, a text file or the
// held-out split of prepared data.
#include <filesystem>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "train/finetune.h"
#include "core/file_util.h"
#include "core/progress.h"
#include "eval/perplexity.h"
#include "eval/tasks.h"
#include "io/hf_dir.h"
#include "tokenizer/tokenizer.h"

namespace llmq::cli {

namespace fs = std::filesystem;

void register_eval(CLI::App& app) {
  auto* cmd = app.add_subcommand("eval", "evaluate a model");
  cmd->require_subcommand(1);
  auto* ppl = cmd->add_subcommand("ppl", "perplexity over tokens in non-overlapping windows");
  struct Opts {
    std::string model, quant, adapter;
    TokenSource src;
    int64_t ctx = 0;
    bool json = false;
    KvOption kv;
    int tp = 1;
  };
  auto o = std::make_shared<Opts>();
  ppl->add_option("-m,--model", o->model, "model directory, .gguf file, or a training run (its latest checkpoint)")->required()->transform(llmq::cli::kRunLatest);
  ppl->add_option("--adapter", o->adapter, "an adapter directory (PEFT layout: LoRA/DoRA, llmq finetune or made elsewhere), applied unmerged")->transform(llmq::cli::kRunLatest);
  o->src.add(ppl);
  ppl->add_option("--ctx", o->ctx, "window length in tokens (default: 512, or the model's context if smaller)");
  ppl->add_flag("--json", o->json, "print {\"tokens\", \"nll\", \"ppl\"} as JSON");
  o->kv.add(ppl);
  ppl->add_option("--tp", o->tp, "tensor-parallel ranks (under mpirun -np N)")->check(llmq::cli::kPositive);
  ppl->callback([o] {
    Model m = model_load(o->model, load_mode());
    if (!o->adapter.empty()) train::attach_adapter(m, o->adapter);
    const KvType kv = o->kv.resolve(m);
    shard_for_tp(m, o->tp, "eval ppl");
    std::vector<int32_t> toks = o->src.load(o->model, m.config);
    if (o->ctx == 0) o->ctx = std::min<int64_t>(512, m.config.max_seq_len);
    Progress bar("perplexity", 1, !o->json);
    auto r = eval_perplexity(m, toks, o->ctx, [&](int64_t done, int64_t total) {
      bar = Progress("perplexity", (uint64_t)total, !o->json && total > 1);
      bar.update((uint64_t)done);
    }, kv);
    bar.finish();
    if (o->json) {
      fmt::print("{}\n", nlohmann::json{{"tokens", r.predictions}, {"nll", r.nll}, {"ppl", r.ppl}}.dump());
    } else {
      fmt::print("predictions {}  windows {}  nll {:.6f} nats  perplexity {:.4f}\n", r.predictions, r.windows, r.nll, r.ppl);
    }
  });

  auto* tasks = cmd->add_subcommand("tasks", "zero-shot tasks from JSONL: multiple choice by log-likelihood (acc, "
                                             "acc_norm as lm-evaluation-harness), generation by exact match");
  struct TOpts {
    std::string model, adapter;
    std::vector<std::string> files;
    bool json = false;
    KvOption kv;
  };
  auto t = std::make_shared<TOpts>();
  tasks->add_option("-m,--model", t->model, "model directory or training run")->required()->transform(llmq::cli::kRunLatest);
  tasks->add_option("--tasks", t->files, "task files (JSONL: {\"context\", \"choices\", \"answer\": index} or "
                                         "{\"prompt\", \"answer\": \"text\"}; scripts/make_tasks builds them)")
      ->required();
  tasks->add_option("--adapter", t->adapter, "an adapter directory, applied unmerged")->transform(llmq::cli::kRunLatest);
  tasks->add_flag("--json", t->json, "print the scores as JSON");
  t->kv.add(tasks);
  tasks->callback([t] {
    std::vector<TaskItem> items;
    for (const auto& f : t->files) {  // every file checked before the model loads
      auto v = load_tasks(f);
      items.insert(items.end(), v.begin(), v.end());
    }
    Model m = model_load(t->model, load_mode());
    if (!t->adapter.empty()) train::attach_adapter(m, t->adapter);
    auto tok = tokenizer_load(t->model);
    check_tokenizer_fits(*tok, m.config, t->model);
    Progress bar("tasks", (uint64_t)items.size(), !t->json);
    const KvType kv = t->kv.resolve(m);
    const auto scores = eval_tasks(m, *tok, items, [&](int64_t done, int64_t) { bar.update((uint64_t)done); }, kv);
    bar.finish();
    if (t->json) {
      nlohmann::json j = nlohmann::json::array();
      for (const auto& s : scores) {
        nlohmann::json r = {{"task", s.task}, {"n", s.n}};
        if (s.generate) r["exact_match"] = s.exact_match;
        else r["acc"] = s.acc, r["acc_norm"] = s.acc_norm;
        j.push_back(r);
      }
      fmt::print("{}\n", j.dump());
      return;
    }
    fmt::print("{:<24} {:>6} {:>8} {:>9} {:>12}\n", "task", "n", "acc", "acc_norm", "exact_match");
    for (const auto& s : scores)
      if (s.generate) fmt::print("{:<24} {:>6} {:>8} {:>9} {:>12.4f}\n", s.task, s.n, "-", "-", s.exact_match);
      else fmt::print("{:<24} {:>6} {:>8.4f} {:>9.4f} {:>12}\n", s.task, s.n, s.acc, s.acc_norm, "-");
  });

  auto* cmp = cmd->add_subcommand("compare", "a quantized model against its base: perplexity ratio, KL divergence, "
                                             "top-1 agreement");
  auto c = std::make_shared<Opts>();
  cmp->add_option("-m,--model", c->model, "base model directory, .gguf file or training run")->required()->transform(llmq::cli::kRunLatest);
  cmp->add_option("-q,--quant", c->quant, "quantized (or otherwise changed) model directory or .gguf file")->required()->transform(llmq::cli::kRunLatest);
  c->src.add(cmp);
  cmp->add_option("--ctx", c->ctx, "window length in tokens (default: 512, or the model's context if smaller)");
  cmp->add_flag("--json", c->json, "print the figures as JSON");
  c->kv.add(cmp, " of the -q run (-q may name the base model itself to measure the KV cache alone)");
  cmp->callback([c] {
    Model base = model_load(c->model, load_mode());
    Model quant = model_load(c->quant, load_mode());
    const KvType kv = c->kv.resolve(quant);
    std::vector<int32_t> toks = c->src.load(c->model, base.config);
    if (c->ctx == 0) c->ctx = std::min<int64_t>(512, base.config.max_seq_len);
    Progress bar("compare", 1, !c->json);
    auto r = eval_compare(base, quant, toks, c->ctx, [&](int64_t done, int64_t total) {
      bar = Progress("compare", (uint64_t)total, !c->json && total > 1);
      bar.update((uint64_t)done);
    }, kv);
    bar.finish();
    if (c->json) {
      fmt::print("{}\n", nlohmann::json{{"tokens", r.predictions}, {"ppl_base", r.ppl_base}, {"ppl_quant", r.ppl_quant},
                                        {"ppl_ratio", r.ppl_ratio}, {"kld_mean", r.kld_mean}, {"kld_p99", r.kld_p99},
                                        {"kld_max", r.kld_max}, {"top1_agreement", r.top1_agreement}}
                             .dump());
    } else {
      fmt::print("predictions {}  windows {}\n", r.predictions, r.windows);
      fmt::print("perplexity  base {:.4f}  quantized {:.4f}  ratio {:.4f} ({:+.2f}%)\n", r.ppl_base, r.ppl_quant,
                 r.ppl_ratio, 100 * (r.ppl_ratio - 1));
      fmt::print("KL divergence (base || quantized)  mean {:.6f}  p99 {:.6f}  max {:.6f} nats\n", r.kld_mean, r.kld_p99,
                 r.kld_max);
      fmt::print("top-1 agreement  {:.2f}%\n", 100 * r.top1_agreement);
    }
  });
}

}  // namespace llmq::cli
