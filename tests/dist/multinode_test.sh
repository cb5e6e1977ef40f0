#!/usr/bin/env bash
# Two "hosts" on this machine: network namespaces joined by a veth pair (10.231.0.1 and
# 10.231.0.2), mpirun in the first with a hostfile naming both, its launch agent entering
# the second namespace where ssh would log in to a remote node; the ranks talk over
# OpenMPI's TCP transport on the veth link only. Checks that a 2-node data-parallel run
# follows the 1-process loss curve, that tensor-parallel generation across the nodes gives
# one process's tokens, and that an unreachable host ends the job within seconds with a
# message. Needs root (ip netns); skipped with a message otherwise.
# usage: tests/dist/multinode_test.sh LLMQ
set -euo pipefail
LLMQ=$(realpath "$1")
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
command -v mpirun >/dev/null || { echo "SKIP: mpirun not installed (scripts/setup installs openmpi-bin)"; exit 0; }
[ "$(id -u)" = 0 ] && command -v ip >/dev/null || { echo "SKIP: network namespaces need root and iproute2"; exit 0; }
N1=llmq-a$$ N2=llmq-b$$ V1=lq$$a V2=lq$$b
T=$(mktemp -d)
cleanup() { ip netns del $N1 2>/dev/null || true; ip netns del $N2 2>/dev/null || true; rm -rf "$T"; }
trap cleanup EXIT
if ! ip netns add $N1 2>/dev/null; then echo "SKIP: cannot create network namespaces here"; exit 0; fi
ip netns add $N2
ip link add $V1 type veth peer name $V2
ip link set $V1 netns $N1; ip link set $V2 netns $N2
ip -n $N1 addr add 10.231.0.1/24 dev $V1; ip -n $N2 addr add 10.231.0.2/24 dev $V2
for ns in $N1 $N2; do ip -n $ns link set lo up; done
ip -n $N1 link set $V1 up; ip -n $N2 link set $V2 up
cat > "$T/agent.sh" <<SH
#!/usr/bin/env bash
# mpirun's launch agent (what ssh is across real nodes): HOST COMMAND... in HOST's namespace
host=\$1; shift
case \$host in 10.231.0.1) ns=$N1 ;; 10.231.0.2) ns=$N2 ;; *) echo "ssh: connect to host \$host: No route to host" >&2; exit 255 ;; esac
exec ip netns exec \$ns sh -c "\$*"
SH
chmod +x "$T/agent.sh"
printf '10.231.0.1 slots=1\n10.231.0.2 slots=1\n' > "$T/hosts"
source "$ROOT/tests/dist/common.sh"
MPI=(ip netns exec $N1 mpirun --hostfile "$T/hosts" -np 2 --mca plm_rsh_agent "$T/agent.sh"
     --mca btl tcp,self --mca btl_tcp_if_include 10.231.0.0/24 --mca oob_tcp_if_include 10.231.0.0/24
     -x OMPI_ALLOW_RUN_AS_ROOT -x OMPI_ALLOW_RUN_AS_ROOT_CONFIRM)

# Data parallel across the two nodes against one process.
ARGS=("${TRAIN[@]}" --steps 10 --batch 4 --lr 3e-3)
"$LLMQ" -t 1 "${ARGS[@]}" --out "$T/one" >"$T/one.log" 2>&1 || { cat "$T/one.log"; exit 1; }
if timeout 300 "${MPI[@]}" "$LLMQ" -t 1 "${ARGS[@]}" --out "$T/two" >"$T/two.log" 2>&1; then
  grep -q "rank 1 of 2 (mpi" "$T/two.log" || fail "no rank line from the second node"
  echo -n "2 nodes vs 1 process: "; same_curve "$T/one" "$T/two" 10 || fail "2-node loss curve differs"
else
  tail -20 "$T/two.log"; fail "2-node training job"
fi
# Tensor-parallel generation across the nodes.
"$LLMQ" init --preset tiny --dtype f32 --seed 7 --out "$T/m" >/dev/null 2>&1
GEN=(generate -m "$T/m" -p "1 17 42 99 3 250" --ids -n 16 --temperature 0 --ignore-eos --json)
tokens() { /usr/bin/python3 -c "import json,sys; print(json.loads(sys.stdin.read().strip().splitlines()[-1])['results'][0]['tokens'])"; }
one=$("$LLMQ" -t 1 "${GEN[@]}" 2>/dev/null | tokens)
two=$(timeout 120 "${MPI[@]}" "$LLMQ" "${GEN[@]}" --tp 2 2>/dev/null | tokens) || fail "2-node tp generation"
[ "$one" = "${two:-}" ] && echo "ok: tp=2 across 2 nodes = 1 process: $one" || fail "tp across nodes: ${two:-} vs $one"
# An unreachable host: the job ends within seconds, saying so.
printf '10.231.0.1 slots=1\n10.231.0.9 slots=1\n' > "$T/bad_hosts"
t0=$SECONDS
if timeout 60 ip netns exec $N1 mpirun --hostfile "$T/bad_hosts" -np 2 --mca plm_rsh_agent "$T/agent.sh" \
    --mca oob_tcp_if_include 10.231.0.0/24 "$LLMQ" -t 1 "${ARGS[@]}" --out "$T/bad" >"$T/bad.log" 2>&1; then
  fail "a job with an unreachable host succeeded"
elif [ $((SECONDS - t0)) -ge 30 ]; then fail "unreachable host: took $((SECONDS - t0)) s"
elif grep -q "No route to host\|unable to reliably start\|daemon" "$T/bad.log"; then echo "ok: unreachable host reported in $((SECONDS - t0)) s"
else tail -5 "$T/bad.log"; fail "unreachable host: no message"; fi

[ $fails -eq 0 ] || { echo "$fails failure(s)"; exit 1; }
echo "multi-node: all cases passed"
