#!/usr/bin/env bash
# Pipeline training over a slow link (issue 24): two network namespaces joined by a veth pair,
# both ends shaped with tc's token bucket (tbf) to RATE, mpirun in the first with a hostfile
# naming both and a launch agent that enters the second (as ssh would log in to a remote
# node); OpenMPI's TCP transport on the veth link only. For each rate (unshaped, 1gbit,
# 100mbit) the rate actually achieved (a 64 MB TCP transfer across the link), then --pp 2
# training per codec: step time, tokens/s, bytes per step on the link, and the step time a
# perfect overlap would give, max(compute, bytes / measured rate), compute being the
# unshaped run's step; the codecs' own cost from a --profile-trace of the unshaped runs.
# This kernel has no netem (no added delay): rate only. Needs root; skipped otherwise.
# usage: bench/pp_link.sh [STEPS] [DATA] [RATES]     (default 12 data/ft-base "none 1gbit 100mbit 10mbit";
#        the first rate should be none: its step times are the compute the others are compared with)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-12}
D=${2:-data/ft-base}
RATES=${3:-none 1gbit 100mbit 10mbit}
[ "$(id -u)" = 0 ] || { echo "SKIP: network namespaces need root"; exit 0; }
N1=llmq-pa$$ N2=llmq-pb$$ V1=lp$$a V2=lp$$b
T=$(mktemp -d)
LLMQ=$T/llmq; cp build/llmq "$LLMQ"  # a copy: rebuilding during the run changes nothing
cleanup() { ip netns del $N1 2>/dev/null || true; ip netns del $N2 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT
ip netns add $N1; ip netns add $N2
ip link add $V1 type veth peer name $V2
ip link set $V1 netns $N1; ip link set $V2 netns $N2
ip -n $N1 addr add 10.232.0.1/24 dev $V1; ip -n $N2 addr add 10.232.0.2/24 dev $V2
for ns in $N1 $N2; do ip -n $ns link set lo up; done
ip -n $N1 link set $V1 up; ip -n $N2 link set $V2 up
# Segmentation offload off where ethtool exists (else the kernel's 64 KB GSO segments pass the
# shaper as single packets).
if command -v ethtool >/dev/null; then ip netns exec $N1 ethtool -K $V1 tso off gso off gro off >/dev/null 2>&1 || true
  ip netns exec $N2 ethtool -K $V2 tso off gso off gro off >/dev/null 2>&1 || true; offload="off"; else offload="on (no ethtool)"; fi
cat > "$T/agent.sh" <<SH
#!/usr/bin/env bash
host=\$1; shift
case \$host in 10.232.0.1) ns=$N1 ;; 10.232.0.2) ns=$N2 ;; *) exit 255 ;; esac
exec ip netns exec \$ns sh -c "\$*"
SH
chmod +x "$T/agent.sh"
printf '10.232.0.1 slots=1\n10.232.0.2 slots=1\n' > "$T/hosts"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPI=(ip netns exec $N1 mpirun --hostfile "$T/hosts" -np 2 --mca plm_rsh_agent "$T/agent.sh"
     --mca btl tcp,self --mca btl_tcp_if_include 10.232.0.0/24 --mca oob_tcp_if_include 10.232.0.0/24
     -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM -x OPENBLAS_CORETYPE)
# A model whose stages compute little per byte they send (the slow-link regime): width 256,
# 4 blocks (2 per stage), FFN 768; 8 sequences of 256 tokens in 4 micro-batches a step.
cat > "$T/config.json" <<'JSON'
{"model_type": "llama", "hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4,
 "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 8000, "max_position_embeddings": 512,
 "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 2}
JSON
ARGS=(train --config "$T/config.json" --data "$(realpath "$D")" --steps "$STEPS" --batch 8 --seq-len 256 --warmup 2
      --log-every 1 --eval-every 0 --save-every 0 --sample-tokens 0 --json --pp 2 --micro-batches 4)
shape() {  # shape RATE|none
  for pair in "$N1 $V1" "$N2 $V2"; do
    set -- $pair
    ip netns exec $1 tc qdisc del dev $2 root 2>/dev/null || true
    [ "$RATE" = none ] || ip netns exec $1 tc qdisc add dev $2 root tbf rate "$RATE" burst 256kb latency 100ms
  done
}
measure() {  # the rate a 64 MB TCP transfer achieves, MB/s
  ip netns exec $N2 /usr/bin/python3 -c "
import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('10.232.0.2', 5599)); s.listen(1)
c,_=s.accept(); n=0
while True:
    b=c.recv(1<<20)
    if not b: break
    n+=len(b)
" & local srv=$!
  sleep 0.5
  ip netns exec $N1 /usr/bin/python3 -c "
import socket, time; s=socket.create_connection(('10.232.0.2', 5599)); b=bytes(1<<20); t=time.time()
for _ in range(64): s.sendall(b)
s.shutdown(socket.SHUT_WR); s.recv(1); print(f'{64*1.048576/(time.time()-t):.1f}')"
  wait $srv
}
printf "%-8s %9s %-10s %9s %8s %12s %11s %9s\n" link "MB/s" codec "step s" "tok/s" "link MB/step" "ideal s" "vs ideal"
declare -A compute
for RATE in $RATES; do
  shape
  mbs=$(measure)
  for codec in none fixpoint tah; do
    flags=()
    [ $codec = none ] || flags=(--pp-compress-fwd $codec --pp-compress-bwd fixpoint)
    trace=()
    [ $RATE = none ] && trace=(--profile-trace "$T/trace-$codec.json")
    j=$(timeout 900 "${MPI[@]}" "$LLMQ" -t 1 "${ARGS[@]}" "${flags[@]}" "${trace[@]}" --out "$T/run-$RATE-$codec" 2>"$T/err.log" | grep '^{' | tail -1) ||
      { tail -5 "$T/err.log"; exit 1; }
    line=$(/usr/bin/python3 - "$j" "$T/run-$RATE-$codec/metrics.jsonl" "$mbs" "$RATE" "$codec" "${compute[$codec]:-0}" "$T/trace-$codec.json" 2>"$T/step" <<'PY'
import json, os, sys
j, rows, mbs, rate, codec, comp, trace = json.loads(sys.argv[1]), [json.loads(l) for l in open(sys.argv[2])], float(sys.argv[3]), sys.argv[4], sys.argv[5], float(sys.argv[6]), sys.argv[7]
steps = len(rows)
k = 3  # steps 1-3: start-up
step = (rows[-1]["elapsed_s"] - rows[k - 1]["elapsed_s"]) / (steps - k)
r0, r1 = j["pipeline_ranks"]
link = (r0["stage_fwd_bytes"] + r1["stage_bwd_bytes"]) / steps / 1e6
if rate == "none": comp = step
ideal = max(comp, link / mbs)
note = ""
if rate == "none" and os.path.exists(trace):
    ev = [e for e in json.load(open(trace))["traceEvents"] if e.get("ph") == "X"]
    for tid in (0, 1):
        cost = sum(e["dur"] for e in ev if e["tid"] == tid and e["name"].split()[0] in ("encode", "decode")) / 1e6 / steps
        note += f" codec r{tid} {cost / step * 100:.1f}%"
print(f"{rate:<8} {mbs:>9.1f} {codec:<10} {step:>9.3f} {8 * 256 / step:>8.0f} {link:>12.2f} {ideal:>11.3f} {step / ideal:>8.2f}x{note}")
print(step, file=sys.stderr)
PY
)
    echo "$line"
    [ $RATE = none ] && compute[$codec]=$(cat "$T/step")
  done
done
echo "summary: --pp 2 over a veth link shaped by tbf (segmentation offload $offload); ideal = max(unshaped step, link bytes / measured rate)"
