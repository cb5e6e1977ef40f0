// Fine-tuning support around the training model's adapter mode (llama_train.h): loading the
// frozen base (float, quantized, or quantized while it is read) and adapter checkpoints
// (a PEFT adapter directory plus train_state.bin).
#pragma once
#include <cstdint>
#include <functional>
#include <string>

#include "train/checkpoint.h"
#include "train/llama_train.h"

namespace llmq::train {

// Fills m's frozen base from a model directory:
//  - float (f32/bf16/f16) into m.base, or with `quantize` (rtn4, hqq4, ...; quant/quant_base.h)
//    each linear quantized as it is read from the mapped file into m.qbase (one linear in f32
//    at a time: the base is never in memory in float);
//  - a quantized directory (GPTQ layout: RTN, GPTQ, AWQ, HQQ; llmq's FP8) as loaded: its linears
//    into m.qbase, dequantized a block at a time for the products.
// keep(unit), when given, selects the units (unit_of_tensor) this rank holds (a sharded base,
// train/base_shard.h): the others are not read, quantized or touched.
// Returns the bytes the base's linears occupy as held (f32, or their quantized form).
uint64_t load_frozen_base(LlamaTrain<float>& m, const std::string& dir, const std::string& quantize, bool progress,
                          const std::function<bool(int)>& keep = {});

// Bits per weight of the base's block linears as load_frozen_base holds them (codes plus
// scales and zero points; 32 for f32), for a model with config c and --quantize-base q.
double base_linear_bits(const ModelConfig& c, const std::string& quantize);

// An adapter checkpoint in `tmp`: adapter_config.json + adapter_model.safetensors (PEFT's
// layout, f32) + train_state.bin (the trained values' AdamW moments) + the tokenizer.
void write_adapter_checkpoint(const std::string& tmp, const LlamaTrain<float>& m, const float* mom, const float* v,
                              const CheckpointHead& head, const std::string& tokenizer_src);
CheckpointSource open_adapter_checkpoint(const std::string& dir, const ModelConfig& c, const AdapterConfig& a);

// Attaches a PEFT adapter directory (llmq's, or one made elsewhere) to a loaded model for
// inference, unmerged (LoraLinear in model/llama.h; trained norms replace the model's). Works
// on float and quantized bases; DoRA's scales come from the weights as the model runs them.
// Fails naming the file when the adapter does not fit the model.
void attach_adapter(Model& m, const std::string& dir);
// Folds an attached adapter into the weights (`llmq merge`): W' = W + s B A (LoRA), or
// c (W + s B A) per row (DoRA); every linear of a quantized base becomes f32 (its dequantized
// values, merged where adapted) and the config loses its quantization_config. Returns the
// number of linears merged.
int64_t merge_adapter(Model& m);
// `llmq export --format gguf-lora`: the adapter in DIR (LoRA, for the model whose config.json
// is in base_dir) as a llama.cpp LoRA GGUF (io/gguf.h). An rsLoRA adapter is written with
// alpha * sqrt(r), so llama.cpp's alpha / r gives its alpha / sqrt(r). DoRA adapters and
// trained norms are refused (llama.cpp's adapters have neither): `llmq merge` them instead.
void export_adapter_gguf(const std::string& base_dir, const std::string& adapter_dir, const std::string& type,
                         const std::string& out);

}  // namespace llmq::train
