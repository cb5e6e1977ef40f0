// Collective communication between the ranks of a job: the interface the multi-process code
// (data-parallel training now; sharded training and tensor parallelism later) is written
// against. Implemented on MPI (Debian's OpenMPI, `mpirun -np N llmq ...`) and by a local
// single-rank communicator that needs no MPI runtime; an NCCL implementation takes device
// pointers through the same calls.
//
// Reductions are deterministic: all_reduce is a reduce-scatter (each rank sums its 1/N of
// the buffer over ranks 0..N-1 in rank order) followed by an all-gather, so the same inputs
// give bitwise the same sums on every rank and in every run, and each rank sends and
// receives 2(N-1)/N of the buffer (a ring's volume).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <functional>
#include <string>
#include <vector>

namespace llmq::dist {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "local", "mpi"
  virtual std::string host() const = 0;     // this rank's host name

  // data (n f32 on every rank) = the element-wise sum over ranks, on every rank.
  virtual void all_reduce_sum(float* data, size_t n) = 0;
  // Starts all_reduce_sum(data, n) in the background and returns at once (MPI: on a
  // communication thread; NCCL: on a stream); wait() returns when every started reduction
  // is complete. `data` must not be touched, and no other collective called, until then.
  // Reductions run in the order started, with the same results as all_reduce_sum. Default:
  // done at once.
  virtual void all_reduce_sum_start(float* data, size_t n) { all_reduce_sum(data, n); }
  // Any work that makes collective calls (all_gather, reduce_scatter_sum, ... of this
  // communicator, which run inline there), queued behind the started reductions on the same
  // thread: FSDP's prefetched gathers and overlapped reduce-scatters. Default: at once.
  virtual void start(std::function<void()> job) { job(); }
  virtual void wait() {}
  // out (n/size) = the sum over ranks of in[rank*n/size .. (rank+1)*n/size); n % size == 0.
  virtual void reduce_scatter_sum(const float* in, float* out, size_t n) = 0;
  // out (n*size) = every rank's in (n), in rank order.
  virtual void all_gather(const float* in, float* out, size_t n) = 0;
  virtual void broadcast(void* data, size_t bytes, int root) = 0;
  virtual void send(const void* data, size_t bytes, int peer, int tag = 0) = 0;
  virtual void recv(void* data, size_t bytes, int peer, int tag = 0) = 0;
  virtual void barrier() = 0;
  // The ranks that pass the same color, as a communicator of their own ranked by key (every
  // rank calls it): the groups of a mesh (pipeline stages, data-parallel replicas).
  virtual std::unique_ptr<Communicator> split(int color, int key) = 0;
  // A send that returns at once; `data` must stay valid and unchanged until wait_sends()
  // (pipeline stages: two neighbours sending to each other must not wait on each other).
  virtual void isend(const void* data, size_t bytes, int peer, int tag = 0) { send(data, bytes, peer, tag); }
  virtual void wait_sends() {}
  // Receives the next message from peer with tag, whatever its length up to max_bytes (a
  // longer one is an error naming its size), into buf; returns its length.
  virtual size_t recv_any(std::vector<char>& buf, size_t max_bytes, int peer, int tag = 0) = 0;
  // Every rank fails with `message` unless all ranks pass the same value (a config check).
  void check_same(uint64_t value, const std::string& what);

  uint64_t bytes_sent = 0, bytes_received = 0;  // payload this rank moved (for the benchmarks)
};

// The job's communicator: MPI when the process was started by mpirun (and llmq was built
// with MPI), else the local one. Initialised on first use; later calls return the same one.
Communicator& world();
// Whether world() is a multi-rank job (without initialising it).
bool launched_by_mpirun();
// Ends the whole job after an error on one rank (MPI_Abort), so no rank waits forever in a
// collective for a rank that has gone; does nothing in a single process.
void abort_job(int code);

std::unique_ptr<Communicator> make_local_comm();

}  // namespace llmq::dist
