// A Jinja subset, enough for the chat templates Llama models ship in tokenizer_config.json:
// {{ expr }}, {% if/elif/else %}, {% for x in xs %} with loop.*, {% set %} (and
// namespace()), {# comments #}, whitespace control (-) and Hugging Face's trim_blocks /
// lstrip_blocks; literals, attribute and item access, slices, arithmetic, comparisons,
// and/or/not, in, is-tests, filters (trim, length, tojson, join, default, upper, lower,
// first, last, reject, select, ...), string and dict methods, raise_exception().
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace llmq {

// Renders `tmpl` with the variables of `context` (a JSON object). Template errors and
// raise_exception() throw Error naming `what`.
std::string jinja_render(const std::string& tmpl, const nlohmann::json& context, const std::string& what = "template");

}  // namespace llmq
