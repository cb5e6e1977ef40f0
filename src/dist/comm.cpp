// The local (single-rank) communicator and the choice of the job's communicator.
#include "dist/comm.h"

#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/error.h"

namespace llmq::dist {

#ifdef LLMQ_HAVE_MPI
std::unique_ptr<Communicator> make_mpi_comm();  // comm_mpi.cpp
void mpi_abort(int code);
#endif

namespace {
class LocalComm final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "local"; }
  std::string host() const override {
    char h[256] = {0};
    gethostname(h, sizeof h - 1);
    return h;
  }
  void all_reduce_sum(float*, size_t) override {}
  void reduce_scatter_sum(const float* in, float* out, size_t n) override {
    if (in != out) std::memmove(out, in, n * sizeof(float));
  }
  void all_gather(const float* in, float* out, size_t n) override {
    if (in != out) std::memmove(out, in, n * sizeof(float));
  }
  void broadcast(void*, size_t, int root) override {
    if (root != 0) fail("broadcast from rank {} in a single-rank job", root);
  }
  void send(const void*, size_t, int peer, int) override { fail("send to rank {} in a single-rank job", peer); }
  void recv(void*, size_t, int peer, int) override { fail("recv from rank {} in a single-rank job", peer); }
  void barrier() override {}
  std::unique_ptr<Communicator> split(int, int) override { return make_local_comm(); }
  size_t recv_any(std::vector<char>&, size_t, int peer, int) override { fail("recv from rank {} in a single-rank job", peer); }
};
}  // namespace

std::unique_ptr<Communicator> make_local_comm() { return std::make_unique<LocalComm>(); }

void Communicator::check_same(uint64_t value, const std::string& what) {
  if (size() == 1) return;
  std::vector<float> mine(2, 0.f), all(2 * (size_t)size());
  mine[0] = (float)(value & 0xffffff), mine[1] = (float)((value >> 24) & 0xffffff);  // exact in f32
  all_gather(mine.data(), all.data(), 2);
  for (int r = 0; r < size(); r++)
    if (all[2 * r] != mine[0] || all[2 * r + 1] != mine[1])
      fail("rank {} and rank {} disagree on {}; start every rank with the same command and files", rank(), r, what);
}

bool launched_by_mpirun() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

Communicator& world() {
  static std::unique_ptr<Communicator> w = [] {
    if (!launched_by_mpirun()) return make_local_comm();
#ifdef LLMQ_HAVE_MPI
    return make_mpi_comm();
#else
    fail("started by mpirun, but this llmq was built without MPI (install libopenmpi-dev and rebuild)");
#endif
  }();
  return *w;
}

void abort_job(int code) {
#ifdef LLMQ_HAVE_MPI
  if (launched_by_mpirun()) mpi_abort(code);
#endif
  (void)code;
}

}  // namespace llmq::dist
