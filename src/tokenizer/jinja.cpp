// The Jinja subset: a template is split into text and tags, tags into a statement tree whose
// expressions stay token lists; expressions are evaluated by a recursive-descent parser that
// can also run "dead" (parse without computing) so `and`/`or`/`if` short-circuit.
#include "tokenizer/jinja.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <memory>
#include <vector>

#include "core/error.h"

namespace llmq {

namespace {
using json = nlohmann::json;

struct Tok {
  enum Kind { Name, Str, Num, Op, End } kind;
  std::string s;
  double num = 0;
  int64_t ival = 0;
  bool is_int = false;
};

// A value: JSON, or Jinja's "undefined" (a missing variable or attribute).
struct Val {
  json j;
  bool undef = false;
  static Val undefined() { return {json(), true}; }
};

[[noreturn]] void jfail(const std::string& what, const std::string& msg) { fail("{}: {}", what, msg); }

// Bounds on what a template may build: any string (and the output) up to 16 MiB, any list up
// to a million items. A rendered chat prompt is a few hundred KB at most.
constexpr size_t kMaxText = size_t(16) << 20;
constexpr size_t kMaxItems = 1'000'000;

std::vector<Tok> lex_expr(const std::string& src, const std::string& what) {
  std::vector<Tok> out;
  size_t i = 0;
  while (i < src.size()) {
    char c = src[i];
    if (isspace((unsigned char)c)) { i++; continue; }
    if (isalpha((unsigned char)c) || c == '_') {
      size_t j = i;
      while (j < src.size() && (isalnum((unsigned char)src[j]) || src[j] == '_')) j++;
      out.push_back({Tok::Name, src.substr(i, j - i)});
      i = j;
    } else if (isdigit((unsigned char)c)) {
      size_t j = i;
      bool dot = false;
      while (j < src.size() && (isdigit((unsigned char)src[j]) || (src[j] == '.' && !dot && j + 1 < src.size() && isdigit((unsigned char)src[j + 1]))))
        dot |= src[j++] == '.';
      Tok t{Tok::Num, src.substr(i, j - i)};
      t.num = std::stod(t.s);
      t.is_int = !dot;
      if (t.is_int) {
        errno = 0;
        t.ival = std::strtoll(t.s.c_str(), nullptr, 10);
        if (errno == ERANGE) jfail(what, "integer literal too large");
      }
      out.push_back(t);
      i = j;
    } else if (c == '\'' || c == '"') {
      std::string s;
      size_t j = i + 1;
      for (; j < src.size() && src[j] != c; j++) {
        if (src[j] == '\\' && j + 1 < src.size()) {
          char e = src[++j];
          s += e == 'n' ? '\n' : e == 't' ? '\t' : e == 'r' ? '\r' : e;
        } else {
          s += src[j];
        }
      }
      if (j >= src.size()) jfail(what, "unterminated string literal");
      out.push_back({Tok::Str, s});
      i = j + 1;
    } else {
      static const char* two[] = {"==", "!=", "<=", ">=", "//", "**"};
      std::string op(1, c);
      for (const char* t : two)
        if (src.compare(i, 2, t) == 0) op = t;
      if (std::string("()[]{}.,:|+-*/%~<>=!").find(c) == std::string::npos) jfail(what, fmt::format("unexpected character '{}'", c));
      out.push_back({Tok::Op, op});
      i += op.size();
    }
  }
  out.push_back({Tok::End, ""});
  return out;
}

bool truthy(const Val& v) {
  if (v.undef || v.j.is_null()) return false;
  if (v.j.is_boolean()) return v.j.get<bool>();
  if (v.j.is_number()) return v.j.get<double>() != 0;
  if (v.j.is_string() || v.j.is_array() || v.j.is_object()) return !v.j.empty();
  return true;
}

std::string to_str(const Val& v) {
  if (v.undef || v.j.is_null()) return v.undef ? "" : "None";
  if (v.j.is_string()) return v.j.get<std::string>();
  if (v.j.is_boolean()) return v.j.get<bool>() ? "True" : "False";
  if (v.j.is_number_integer()) return std::to_string(v.j.get<int64_t>());
  return v.j.dump();
}

std::string strip(const std::string& s, const std::string& chars = " \t\n\r\f\v") {
  size_t a = s.find_first_not_of(chars);
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(chars) - a + 1);
}

// Variable scopes: the innermost first; `set` writes to the innermost.
struct Scopes {
  std::vector<json> stack;
  Val get(const std::string& name) const {
    for (auto it = stack.rbegin(); it != stack.rend(); ++it)
      if (it->contains(name)) return {(*it)[name]};
    return Val::undefined();
  }
  json* find(const std::string& name) {
    for (auto it = stack.rbegin(); it != stack.rend(); ++it)
      if (it->contains(name)) return &(*it)[name];
    return nullptr;
  }
};

class Expr {
 public:
  Expr(const std::vector<Tok>& t, Scopes& sc, const std::string& what) : t_(t), sc_(sc), what_(what) {}
  Val parse_all() {
    Val v = expr(true);
    if (t_[p_].kind != Tok::End) err(fmt::format("unexpected '{}'", t_[p_].s));
    return v;
  }
  Val expr(bool live) { return ternary(live); }
  size_t pos() const { return p_; }
  const Tok& peek() const { return t_[p_]; }
  bool accept_name(const char* n) {
    if (t_[p_].kind == Tok::Name && t_[p_].s == n) return p_++, true;
    return false;
  }
  bool accept_op(const char* o) {
    if (t_[p_].kind == Tok::Op && t_[p_].s == o) return p_++, true;
    return false;
  }
  void expect_op(const char* o) {
    if (!accept_op(o)) err(fmt::format("expected '{}' but found '{}'", o, t_[p_].s));
  }
  std::string expect_name() {
    if (t_[p_].kind != Tok::Name) err(fmt::format("expected a name but found '{}'", t_[p_].s));
    return t_[p_++].s;
  }
  [[noreturn]] void err(const std::string& m) const { jfail(what_, m); }

 private:
  Val ternary(bool live) {
    Val a = or_(live);
    if (accept_name("if")) {
      Val c = or_(live);
      bool take = live && truthy(c);
      Val b = Val::undefined();
      if (accept_name("else")) b = ternary(live && !take);
      return !live ? Val::undefined() : take ? a : b;
    }
    return a;
  }
  Val or_(bool live) {
    Val a = and_(live);
    while (accept_name("or")) {
      bool done = live && truthy(a);
      Val b = and_(live && !done);
      if (live && !done) a = b;
    }
    return a;
  }
  Val and_(bool live) {
    Val a = not_(live);
    while (accept_name("and")) {
      bool done = live && !truthy(a);
      Val b = not_(live && !done);
      if (live && !done) a = b;
    }
    return a;
  }
  Val not_(bool live) {
    if (accept_name("not")) {
      Val v = not_(live);
      return {json(!truthy(v))};
    }
    return compare(live);
  }
  Val compare(bool live) {
    Val a = concat(live);
    for (;;) {
      const Tok& t = t_[p_];
      if (t.kind == Tok::Op && (t.s == "==" || t.s == "!=" || t.s == "<" || t.s == ">" || t.s == "<=" || t.s == ">=")) {
        std::string op = t_[p_++].s;
        Val b = concat(live);
        if (!live) continue;
        bool r;
        if (op == "==") r = a.j == b.j && a.undef == b.undef;
        else if (op == "!=") r = !(a.j == b.j && a.undef == b.undef);
        else if (op == "<") r = a.j < b.j;
        else if (op == ">") r = b.j < a.j;
        else if (op == "<=") r = !(b.j < a.j);
        else r = !(a.j < b.j);
        a = {json(r)};
      } else if (t.kind == Tok::Name && (t.s == "in" || (t.s == "not" && t_[p_ + 1].kind == Tok::Name && t_[p_ + 1].s == "in"))) {
        bool neg = t.s == "not";
        p_ += neg ? 2 : 1;
        Val b = concat(live);
        if (!live) continue;
        bool r = false;
        if (b.j.is_string() && a.j.is_string()) r = b.j.get<std::string>().find(a.j.get<std::string>()) != std::string::npos;
        else if (b.j.is_array()) r = std::find(b.j.begin(), b.j.end(), a.j) != b.j.end();
        else if (b.j.is_object() && a.j.is_string()) r = b.j.contains(a.j.get<std::string>());
        a = {json(r != neg)};
      } else if (accept_name("is")) {
        bool neg = accept_name("not");
        std::string test = expect_name();
        Val arg = Val::undefined();
        if (accept_op("(")) {
          arg = expr(live);
          expect_op(")");
        } else if (test == "equalto" || test == "eq" || test == "sameas") {
          arg = concat(live);
        }
        if (!live) continue;
        a = {json(is_test(a, test, arg) != neg)};
      } else {
        return a;
      }
    }
  }
  bool is_test(const Val& a, const std::string& test, const Val& arg) {
    if (test == "defined") return !a.undef;
    if (test == "undefined") return a.undef;
    if (test == "none") return !a.undef && a.j.is_null();
    if (test == "string") return a.j.is_string();
    if (test == "number") return a.j.is_number();
    if (test == "integer") return a.j.is_number_integer();
    if (test == "boolean") return a.j.is_boolean();
    if (test == "mapping") return a.j.is_object();
    if (test == "iterable") return a.j.is_array() || a.j.is_string() || a.j.is_object();
    if (test == "sequence") return a.j.is_array() || a.j.is_string();
    if (test == "true") return a.j.is_boolean() && a.j.get<bool>();
    if (test == "false") return a.j.is_boolean() && !a.j.get<bool>();
    if (test == "equalto" || test == "eq" || test == "sameas") return a.j == arg.j;
    err(fmt::format("unknown test '{}'", test));
  }
  // Every string a template builds is bounded (kMaxText), so a few statements cannot double a
  // string until memory runs out; a chat prompt is far below it.
  std::string bounded(std::string s) {
    if (s.size() > kMaxText) err(fmt::format("a string of {} bytes exceeds the {} MiB limit", s.size(), kMaxText >> 20));
    return s;
  }
  Val concat(bool live) {
    Val a = additive(live);
    while (accept_op("~")) {
      Val b = additive(live);
      if (live) {
        const std::string x = to_str(a), y = to_str(b);
        if (x.size() + y.size() > kMaxText) bounded(std::string(kMaxText + 1, '\0'));
        a = {json(x + y)};
      }
    }
    return a;
  }
  Val additive(bool live) {
    Val a = mul(live);
    for (;;) {
      bool plus = accept_op("+");
      if (!plus && !accept_op("-")) return a;
      Val b = mul(live);
      if (!live) continue;
      if (plus && a.j.is_string() && b.j.is_string()) {
        if (a.j.get_ref<const std::string&>().size() + b.j.get_ref<const std::string&>().size() > kMaxText)
          err(fmt::format("a string longer than the {} MiB limit", kMaxText >> 20));
        a = {json(a.j.get<std::string>() + b.j.get<std::string>())};
      } else if (plus && a.j.is_array() && b.j.is_array()) {
        if (a.j.size() + b.j.size() > kMaxItems) err("a list longer than 1 million items");
        json r = a.j;
        for (auto& x : b.j) r.push_back(x);
        a = {r};
      } else if (a.j.is_number() && b.j.is_number()) {
        int64_t r;
        if (a.j.is_number_integer() && b.j.is_number_integer()) {
          bool over = plus ? __builtin_add_overflow(a.j.get<int64_t>(), b.j.get<int64_t>(), &r)
                           : __builtin_sub_overflow(a.j.get<int64_t>(), b.j.get<int64_t>(), &r);
          if (over) err("integer overflow");
          a = {json(r)};
        } else {
          a = {json(a.j.get<double>() + (plus ? 1 : -1) * b.j.get<double>())};
        }
      } else {
        err(fmt::format("cannot apply '{}' to {} and {}", plus ? "+" : "-", a.j.type_name(), b.j.type_name()));
      }
    }
  }
  Val mul(bool live) {
    Val a = unary(live);
    for (;;) {
      std::string op = t_[p_].kind == Tok::Op ? t_[p_].s : "";
      if (op != "*" && op != "/" && op != "%" && op != "//") return a;
      p_++;
      Val b = unary(live);
      if (!live) continue;
      if (op == "*" && a.j.is_string() && b.j.is_number_integer()) {
        std::string r;
        if ((double)b.j.get<int64_t>() * (double)a.j.get<std::string>().size() > kMaxText) err("string repetition too long");
        for (int64_t k = 0; k < b.j.get<int64_t>(); k++) r += a.j.get<std::string>();
        a = {json(r)};
        continue;
      }
      if (!a.j.is_number() || !b.j.is_number()) err(fmt::format("cannot apply '{}' to non-numbers", op));
      bool ints = a.j.is_number_integer() && b.j.is_number_integer();
      if ((op != "*") && b.j.get<double>() == 0) err("division by zero");
      const double x = a.j.get<double>(), y = b.j.get<double>();
      if (ints && op != "/") {
        // Integer *, //, % in int64 with overflow refused (Python would switch to bignums).
        const int64_t p = a.j.get<int64_t>(), q = b.j.get<int64_t>();
        int64_t r;
        if (op == "*") {
          if (__builtin_mul_overflow(p, q, &r)) err("integer overflow");
        } else {
          if (q == -1 && p == INT64_MIN) err("integer overflow");
          const int64_t m = p % q;  // Python's floor semantics: the remainder takes q's sign
          r = op == "//" ? p / q - (m != 0 && ((m < 0) != (q < 0))) : (m != 0 && ((m < 0) != (q < 0))) ? m + q : m;
        }
        a = {json(r)};
      } else {
        a = {json(op == "*" ? x * y : op == "/" ? x / y : op == "//" ? std::floor(x / y) : std::fmod(x, y))};
      }
    }
  }
  Val unary(bool live) {
    if (accept_op("-")) {
      Val v = unary(live);
      if (!live) return v;
      if (!v.j.is_number()) err("unary minus on a non-number");
      if (v.j.is_number_integer() && v.j.get<int64_t>() == INT64_MIN) err("integer overflow");
      return v.j.is_number_integer() ? Val{json(-v.j.get<int64_t>())} : Val{json(-v.j.get<double>())};
    }
    Val v = postfix(live);
    while (accept_op("|")) {
      std::string f = expect_name();
      std::vector<Val> args;
      json kw = json::object();
      if (accept_op("(")) call_args(live, args, kw);
      if (live) v = filter(f, v, args, kw);
    }
    return v;
  }
  void call_args(bool live, std::vector<Val>& args, json& kw) {
    if (accept_op(")")) return;
    do {
      if (t_[p_].kind == Tok::Name && t_[p_ + 1].kind == Tok::Op && t_[p_ + 1].s == "=") {
        std::string k = t_[p_].s;
        p_ += 2;
        kw[k] = expr(live).j;
      } else {
        args.push_back(expr(live));
      }
    } while (accept_op(","));
    expect_op(")");
  }
  Val filter(const std::string& f, const Val& v, const std::vector<Val>& a, const json& kw) {
    auto arg = [&](size_t i, const char* name, json def) -> json {
      if (i < a.size()) return a[i].j;
      if (kw.contains(name)) return kw[name];
      return def;
    };
    if (f == "trim") return {json(strip(to_str(v)))};
    if (f == "length" || f == "count") {
      if (v.j.is_string() || v.j.is_array() || v.j.is_object()) return {json((int64_t)(v.j.is_string() ? v.j.get<std::string>().size() : v.j.size()))};
      err("length of a value that has none");
    }
    if (f == "tojson") {
      json ind = arg(0, "indent", json());
      return {json(ind.is_number_integer() ? v.j.dump((int)ind.get<int64_t>()) : v.j.dump())};
    }
    if (f == "string") return {json(to_str(v))};
    if (f == "upper" || f == "lower") {
      std::string s = to_str(v);
      for (auto& ch : s) ch = (char)(f == "upper" ? toupper((unsigned char)ch) : tolower((unsigned char)ch));
      return {json(s)};
    }
    if (f == "capitalize") {
      std::string s = to_str(v);
      for (size_t i = 0; i < s.size(); i++) s[i] = (char)(i ? tolower((unsigned char)s[i]) : toupper((unsigned char)s[i]));
      return {json(s)};
    }
    if (f == "default" || f == "d") return v.undef || (arg(1, "boolean", false).is_boolean() && arg(1, "boolean", false).get<bool>() && !truthy(v)) ? Val{arg(0, "default_value", "")} : v;
    if (f == "first" || f == "last") {
      if (!v.j.is_array() || v.j.empty()) return Val::undefined();
      return {f == "first" ? v.j.front() : v.j.back()};
    }
    if (f == "join") {
      if (!v.j.is_array()) err("join of a non-list");
      std::string sep = arg(0, "d", "").is_string() ? arg(0, "d", "").get<std::string>() : "", s;
      for (size_t i = 0; i < v.j.size(); i++) {
        s += (i ? sep : "") + to_str({v.j[i]});
        if (s.size() > kMaxText) err(fmt::format("join: a string longer than the {} MiB limit", kMaxText >> 20));
      }
      return {json(s)};
    }
    if (f == "list") {
      if (v.j.is_array()) return v;
      json r = json::array();
      if (v.j.is_string())
        for (char ch : v.j.get<std::string>()) r.push_back(std::string(1, ch));
      return {r};
    }
    if (f == "items") {
      json r = json::array();
      if (v.j.is_object())
        for (auto& [k, x] : v.j.items()) r.push_back(json::array({k, x}));
      return {r};
    }
    if (f == "reject" || f == "select") {
      if (!v.j.is_array()) err(f + " of a non-list");
      std::string test = a.empty() ? "true" : to_str(a[0]);
      Val targ = a.size() > 1 ? a[1] : Val::undefined();
      json r = json::array();
      for (auto& x : v.j)
        if ((a.empty() ? truthy({x}) : is_test({x}, test, targ)) == (f == "select")) r.push_back(x);
      return {r};
    }
    if (f == "replace") return {json(replace_all(to_str(v), to_str(a.at(0)), to_str(a.at(1))))};
    if (f == "int") {
      double x = v.j.is_number() ? v.j.get<double>() : std::atof(to_str(v).c_str());
      if (!(std::fabs(x) < 9.2e18)) err("int() of a value out of range");
      return {json((int64_t)x)};
    }
    if (f == "safe" || f == "e" || f == "escape") return v;
    err(fmt::format("unknown filter '{}'", f));
  }
  // Linear (a new string, not replace() in place, which moves the tail at every match) and bounded.
  std::string replace_all(const std::string& s, const std::string& from, const std::string& to) {
    if (from.empty()) return s;
    std::string r;
    size_t i = 0;
    for (size_t j; (j = s.find(from, i)) != std::string::npos; i = j + from.size()) {
      r.append(s, i, j - i).append(to);
      if (r.size() > kMaxText) err(fmt::format("replace: a string longer than the {} MiB limit", kMaxText >> 20));
    }
    return r.append(s, i, std::string::npos);
  }
  Val postfix(bool live) {
    Val v = primary(live);
    for (;;) {
      if (accept_op(".")) {
        std::string name = expect_name();
        if (t_[p_].kind == Tok::Op && t_[p_].s == "(") {
          p_++;
          std::vector<Val> args;
          json kw = json::object();
          call_args(live, args, kw);
          if (live) v = method(v, name, args);
        } else if (live) {
          v = v.j.is_object() && v.j.contains(name) ? Val{v.j[name]} : Val::undefined();
        }
      } else if (accept_op("[")) {
        Val a = Val::undefined(), b = Val::undefined();
        bool slice = false;
        if (!(t_[p_].kind == Tok::Op && t_[p_].s == ":")) a = expr(live);
        if (accept_op(":")) {
          slice = true;
          if (!(t_[p_].kind == Tok::Op && t_[p_].s == "]")) b = expr(live);
        }
        expect_op("]");
        if (!live) continue;
        v = slice ? do_slice(v, a, b) : index(v, a);
      } else {
        return v;
      }
    }
  }
  Val index(const Val& v, const Val& k) {
    if (v.j.is_object() && k.j.is_string()) return v.j.contains(k.j.get<std::string>()) ? Val{v.j[k.j.get<std::string>()]} : Val::undefined();
    if ((v.j.is_array() || v.j.is_string()) && k.j.is_number_integer()) {
      int64_t n = v.j.is_array() ? (int64_t)v.j.size() : (int64_t)v.j.get<std::string>().size(), i = k.j.get<int64_t>();
      if (i < 0) i += n;
      if (i < 0 || i >= n) return Val::undefined();
      return v.j.is_array() ? Val{v.j[i]} : Val{json(std::string(1, v.j.get<std::string>()[i]))};
    }
    return Val::undefined();
  }
  Val do_slice(const Val& v, const Val& a, const Val& b) {
    int64_t n = v.j.is_array() ? (int64_t)v.j.size() : v.j.is_string() ? (int64_t)v.j.get<std::string>().size() : -1;
    if (n < 0) err("slice of a value that is not a list or string");
    auto norm = [&](const Val& x, int64_t def) {
      if (x.undef || x.j.is_null()) return def;
      int64_t i = x.j.get<int64_t>();
      return std::clamp<int64_t>(i < 0 ? i + n : i, 0, n);
    };
    int64_t s = norm(a, 0), e = std::max(s, norm(b, n));
    if (v.j.is_string()) return {json(v.j.get<std::string>().substr(s, e - s))};
    json r = json::array();
    for (int64_t i = s; i < e; i++) r.push_back(v.j[i]);
    return {r};
  }
  Val method(const Val& v, const std::string& m, const std::vector<Val>& a) {
    if (v.j.is_string()) {
      const std::string s = v.j.get<std::string>();
      std::string chars = a.empty() ? std::string(" \t\n\r\f\v") : to_str(a[0]);
      if (m == "strip") return {json(strip(s, chars))};
      if (m == "lstrip") {
        size_t p = s.find_first_not_of(chars);
        return {json(p == std::string::npos ? "" : s.substr(p))};
      }
      if (m == "rstrip") {
        size_t p = s.find_last_not_of(chars);
        return {json(p == std::string::npos ? "" : s.substr(0, p + 1))};
      }
      if (m == "startswith") return {json(s.rfind(to_str(a.at(0)), 0) == 0)};
      if (m == "endswith") {
        std::string x = to_str(a.at(0));
        return {json(s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0)};
      }
      if (m == "upper" || m == "lower" || m == "capitalize") return filter(m, v, {}, json::object());
      if (m == "replace") return {json(replace_all(s, to_str(a.at(0)), to_str(a.at(1))))};
      if (m == "split") {
        json r = json::array();
        std::string sep = a.empty() ? " " : to_str(a[0]);
        size_t i = 0, k;
        while ((k = s.find(sep, i)) != std::string::npos) r.push_back(s.substr(i, k - i)), i = k + sep.size();
        r.push_back(s.substr(i));
        return {r};
      }
    }
    if (v.j.is_object()) {
      if (m == "get") {
        std::string k = to_str(a.at(0));
        return v.j.contains(k) ? Val{v.j[k]} : (a.size() > 1 ? a[1] : Val{json()});
      }
      if (m == "items") return filter("items", v, {}, json::object());
      if (m == "keys" || m == "values") {
        json r = json::array();
        for (auto& [k, x] : v.j.items()) r.push_back(m == "keys" ? json(k) : x);
        return {r};
      }
    }
    err(fmt::format("unknown method '{}' on {}", m, v.undef ? "undefined" : v.j.type_name()));
  }
  Val primary(bool live) {
    const Tok t = t_[p_];
    if (t.kind == Tok::Str) {
      p_++;
      std::string s = t.s;
      while (t_[p_].kind == Tok::Str) s += t_[p_++].s;  // adjacent literals concatenate
      return {json(s)};
    }
    if (t.kind == Tok::Num) {
      p_++;
      return t.is_int ? Val{json(t.ival)} : Val{json(t.num)};
    }
    if (accept_op("(")) {
      Val v = expr(live);
      expect_op(")");
      return v;
    }
    if (accept_op("[")) {
      json r = json::array();
      if (!accept_op("]")) {
        do r.push_back(expr(live).j);
        while (accept_op(","));
        expect_op("]");
      }
      return {r};
    }
    if (accept_op("{")) {
      json r = json::object();
      if (!accept_op("}")) {
        do {
          Val k = expr(live);
          expect_op(":");
          Val x = expr(live);
          if (live) r[to_str(k)] = x.j;
        } while (accept_op(","));
        expect_op("}");
      }
      return {r};
    }
    if (t.kind == Tok::Name) {
      p_++;
      if (t.s == "true" || t.s == "True") return {json(true)};
      if (t.s == "false" || t.s == "False") return {json(false)};
      if (t.s == "none" || t.s == "None") return {json()};
      if (t_[p_].kind == Tok::Op && t_[p_].s == "(" && (t.s == "raise_exception" || t.s == "namespace" || t.s == "range")) {
        p_++;
        std::vector<Val> args;
        json kw = json::object();
        call_args(live, args, kw);
        if (!live) return Val::undefined();
        if (t.s == "raise_exception") err("raise_exception: " + (args.empty() ? std::string() : to_str(args[0])));
        if (t.s == "namespace") return {kw};
        json r = json::array();
        int64_t lo = args.size() > 1 ? args[0].j.get<int64_t>() : 0, hi = args.empty() ? 0 : args.back().j.get<int64_t>();
        if (hi > lo && (uint64_t)hi - (uint64_t)lo > kMaxItems) err("range() of more than 1 million items");
        for (int64_t i = lo; i < hi; i++) r.push_back(i);
        return {r};
      }
      return live ? sc_.get(t.s) : Val::undefined();
    }
    err(fmt::format("unexpected '{}'", t.s.empty() ? "end of expression" : t.s));
  }

  const std::vector<Tok>& t_;
  Scopes& sc_;
  std::string what_;
  size_t p_ = 0;
};

// The statement tree.
struct Node {
  enum Kind { Text, Print, If, For, Set } kind = Text;
  std::string text;                           // Text
  std::vector<Tok> expr;                      // Print, Set value, For iterable
  std::vector<std::pair<std::vector<Tok>, std::vector<Node>>> branches;  // If: (cond, body); else: empty cond
  std::vector<std::string> vars;              // For loop variables; Set target (name or ns, attr)
  std::vector<Node> body, else_body;          // For
};

struct Tag {
  bool is_stmt;
  std::string src;
};

class Parser {
 public:
  Parser(const std::string& tmpl, const std::string& what) : what_(what) { split(tmpl); }
  std::vector<Node> parse() {
    std::vector<Node> out;
    std::string end = block(out, {});
    if (!end.empty()) jfail(what_, "unexpected {% " + end + " %}");
    return out;
  }

 private:
  struct Piece {
    bool tag, stmt;
    std::string s;
  };
  void split(const std::string& t) {
    size_t i = 0;
    bool strip_next = false;  // a "-%}" / "-}}" strips the whitespace that follows
    bool after_block = false;  // trim_blocks: drop one newline after a block tag
    while (i <= t.size()) {
      size_t a = std::string::npos;
      for (const char* open : {"{{", "{%", "{#"}) a = std::min(a, t.find(open, i));
      std::string text = t.substr(i, a == std::string::npos ? std::string::npos : a - i);
      if (after_block && !text.empty() && text[0] == '\n') text.erase(0, 1);
      if (strip_next) text.erase(0, std::min(text.size(), text.find_first_not_of(" \t\r\n")));
      if (a == std::string::npos) {
        pieces_.push_back({false, false, text});
        break;
      }
      const char kind = t[a + 1];
      const bool lstrip = a + 2 < t.size() && t[a + 2] == '-';
      if (lstrip) {
        size_t k = text.find_last_not_of(" \t\r\n");
        text.erase(k == std::string::npos ? 0 : k + 1);
      } else if (kind != '{') {
        // lstrip_blocks: spaces and tabs between the start of a line and a block tag go.
        size_t k = a;
        while (k > i && (t[k - 1] == ' ' || t[k - 1] == '\t')) k--;
        if (k == 0 || (k > i && t[k - 1] == '\n')) text.erase(text.find_last_not_of(" \t") + 1);
      }
      pieces_.push_back({false, false, text});
      const std::string close = kind == '{' ? "}}" : kind == '%' ? "%}" : "#}";
      size_t b = t.find(close, a + 2);
      if (b == std::string::npos) jfail(what_, fmt::format("unclosed '{}{}'", '{', kind));
      const bool rstrip = b > a + 2 && t[b - 1] == '-';
      std::string inner = t.substr(a + 2 + lstrip, b - (a + 2 + lstrip) - rstrip);
      if (kind != '#') pieces_.push_back({true, kind == '%', inner});
      strip_next = rstrip;
      after_block = kind != '{';
      i = b + 2;
    }
  }
  // Parses pieces into `out` until one of the `ends` statements; returns the one that ended it.
  std::string block(std::vector<Node>& out, const std::vector<std::string>& ends) {
    while (at_ < pieces_.size()) {
      const Piece& p = pieces_[at_++];
      if (!p.tag) {
        if (!p.s.empty()) {
          Node n;
          n.text = p.s;
          out.push_back(std::move(n));
        }
        continue;
      }
      if (!p.stmt) {
        Node n;
        n.kind = Node::Print;
        n.expr = lex_expr(p.s, what_);
        out.push_back(std::move(n));
        continue;
      }
      std::string s = strip(p.s);
      std::string kw = s.substr(0, s.find_first_of(" \t\n"));
      std::string rest = kw.size() < s.size() ? s.substr(kw.size()) : "";
      for (const auto& e : ends)
        if (kw == e) return last_ = rest, kw;
      if (kw == "if") {
        Node n;
        n.kind = Node::If;
        std::vector<Tok> cond = lex_expr(rest, what_);
        for (;;) {
          std::vector<Node> body;
          std::string end = block(body, {"elif", "else", "endif"});
          if (end.empty()) jfail(what_, "{% if %} without {% endif %}");
          n.branches.push_back({cond, std::move(body)});
          if (end == "endif") break;
          cond = end == "elif" ? lex_expr(last_, what_) : std::vector<Tok>{{Tok::Name, "true"}, {Tok::End, ""}};
        }
        out.push_back(std::move(n));
      } else if (kw == "for") {
        Node n;
        n.kind = Node::For;
        size_t in = rest.find(" in ");
        if (in == std::string::npos) jfail(what_, "expected {% for x in ... %}");
        std::string vars = rest.substr(0, in);
        for (size_t k = 0; k <= vars.size();) {
          size_t c = vars.find(',', k);
          n.vars.push_back(strip(vars.substr(k, c == std::string::npos ? std::string::npos : c - k)));
          if (c == std::string::npos) break;
          k = c + 1;
        }
        n.expr = lex_expr(rest.substr(in + 4), what_);
        std::string end = block(n.body, {"else", "endfor"});
        if (end == "else") end = block(n.else_body, {"endfor"});
        if (end != "endfor") jfail(what_, "{% for %} without {% endfor %}");
        out.push_back(std::move(n));
      } else if (kw == "set") {
        Node n;
        n.kind = Node::Set;
        size_t eq = rest.find('=');
        if (eq == std::string::npos) jfail(what_, "{% set %} needs '='");
        std::string target = strip(rest.substr(0, eq));
        size_t dot = target.find('.');
        n.vars = dot == std::string::npos ? std::vector<std::string>{target}
                                          : std::vector<std::string>{target.substr(0, dot), target.substr(dot + 1)};
        n.expr = lex_expr(rest.substr(eq + 1), what_);
        out.push_back(std::move(n));
      } else {
        jfail(what_, fmt::format("unsupported statement {{% {} %}}", kw));
      }
    }
    return "";
  }
  std::string what_, last_;
  std::vector<Piece> pieces_;
  size_t at_ = 0;
};

struct Renderer {
  Scopes sc;
  std::string what, out;
  int64_t steps = 0;  // statements executed: a bound against runaway nested loops
  Val eval(const std::vector<Tok>& e) { return Expr(e, sc, what).parse_all(); }
  void run(const std::vector<Node>& nodes) {
    for (const auto& n : nodes) {
      if (out.size() > kMaxText) jfail(what, fmt::format("output exceeds {} MiB", kMaxText >> 20));
      if (++steps > 10'000'000) jfail(what, "more than 10 million steps (a runaway loop?)");
      switch (n.kind) {
        case Node::Text: out += n.text; break;
        case Node::Print: out += to_str(eval(n.expr)); break;
        case Node::If:
          for (const auto& [cond, body] : n.branches)
            if (truthy(eval(cond))) {
              run(body);
              break;
            }
          break;
        case Node::Set: {
          Val v = eval(n.expr);
          if (n.vars.size() == 1) {
            sc.stack.back()[n.vars[0]] = v.j;
          } else {
            json* ns = sc.find(n.vars[0]);
            if (!ns || !ns->is_object()) jfail(what, "set " + n.vars[0] + "." + n.vars[1] + ": not a namespace");
            (*ns)[n.vars[1]] = v.j;
          }
          break;
        }
        case Node::For: {
          Val it = eval(n.expr);
          json items = it.j.is_array() ? it.j : json::array();
          if (it.j.is_object())
            for (auto& [k, x] : it.j.items()) items.push_back(n.vars.size() > 1 ? json::array({k, x}) : json(k));
          if (!it.j.is_array() && !it.j.is_object() && !it.undef && !it.j.is_null()) jfail(what, "for over a non-iterable value");
          if (items.empty()) {
            run(n.else_body);
            break;
          }
          const int64_t len = (int64_t)items.size();
          for (int64_t i = 0; i < len; i++) {
            json scope = json::object();
            if (n.vars.size() == 1) scope[n.vars[0]] = items[i];
            else
              for (size_t k = 0; k < n.vars.size(); k++) scope[n.vars[k]] = items[i].is_array() && k < items[i].size() ? items[i][k] : json();
            scope["loop"] = {{"index", i + 1}, {"index0", i}, {"first", i == 0}, {"last", i + 1 == len}, {"length", len},
                             {"revindex", len - i}, {"revindex0", len - i - 1},
                             {"previtem", i > 0 ? items[i - 1] : json()}, {"nextitem", i + 1 < len ? items[i + 1] : json()}};
            sc.stack.push_back(std::move(scope));
            run(n.body);
            sc.stack.pop_back();
          }
          break;
        }
      }
    }
  }
};
}  // namespace

std::string jinja_render(const std::string& tmpl, const nlohmann::json& context, const std::string& what) {
  // Type mismatches inside the evaluator (a string where a number belongs, a missing
  // argument) surface as JSON or range exceptions: one Error for all of them.
  try {
    auto nodes = Parser(tmpl, what).parse();
    Renderer r;
    r.what = what;
    r.sc.stack.push_back(context.is_object() ? context : json::object());
    r.sc.stack.push_back(json::object());
    r.run(nodes);
    return r.out;
  } catch (const nlohmann::json::exception& e) {
    fail("{}: type error ({})", what, e.what());
  } catch (const std::out_of_range&) {
    fail("{}: a filter or method is missing an argument", what);
  } catch (const std::invalid_argument&) {
    fail("{}: invalid number", what);
  }
}

}  // namespace llmq
