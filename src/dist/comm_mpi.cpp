// The MPI communicator (built when CMake finds MPI; OpenMPI's TCP and shared-memory
// transports carry it within a node and across nodes).
#ifdef LLMQ_HAVE_MPI
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <functional>
#include <thread>
#include <vector>

#include "core/error.h"
#include "dist/comm.h"

namespace llmq::dist {

namespace {
void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  fail("MPI {} failed: {}", what, std::string(msg, (size_t)len));
}

// Calls f(offset, count) over [0, n) in pieces MPI's int counts can hold.
template <class F>
void pieces(size_t n, F f) {
  const size_t step = (size_t)INT_MAX / 2;
  for (size_t off = 0; off < n; off += step) f(off, (int)std::min(step, n - off));
}

class MpiComm final : public Communicator {
 public:
  MpiComm() {
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
      int provided = 0;
      // SERIALIZED: the communication thread of all_reduce_sum_start makes MPI calls, never
      // at the same time as the main thread (every collective waits for it first).
      check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "init");
    }
    int level = MPI_THREAD_SINGLE;
    MPI_Query_thread(&level);
    async_ok_ = level >= MPI_THREAD_SERIALIZED;
    // Errors come back as codes (and become llmq errors), not MPI's default abort.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    comm_ = MPI_COMM_WORLD, owner_ = true;
    char name[MPI_MAX_PROCESSOR_NAME];
    int len = 0;
    MPI_Get_processor_name(name, &len);
    host_.assign(name, (size_t)len);
  }
  // A sub-communicator of `parent` (MPI_Comm_split): the ranks that gave the same color,
  // ordered by key.
  MpiComm(const MpiComm& parent, int color, int key) : async_ok_(parent.async_ok_), host_(parent.host_) {
    check(MPI_Comm_split(parent.comm_, color, key, &comm_), "comm_split");
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
  }
  ~MpiComm() override {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (worker_.joinable()) worker_.join();
    for (auto& r : sends_) MPI_Request_free(&r);
    if (!owner_) {
      int fin = 0;
      MPI_Finalized(&fin);
      if (!fin) MPI_Comm_free(&comm_);
      return;
    }
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "mpi"; }
  std::string host() const override { return host_; }

  // On the communication thread (inside a started job) the collectives run inline; on the
  // main thread they first wait for the started work (MPI_THREAD_SERIALIZED).
  void reduce_scatter_sum(const float* in, float* out, size_t n) override {
    if (!on_worker()) wait();
    reduce_scatter(in, out, n);
  }
  void all_gather(const float* in, float* out, size_t n) override {
    if (!on_worker()) wait();
    gather(in, out, n);
  }
  void start(std::function<void()> job) override {
    if (!async_ok_) return job();
    {
      std::lock_guard<std::mutex> l(mu_);
      if (!worker_.joinable()) worker_ = std::thread([this] { work(); });
      jobs_.push_back({nullptr, 0, std::move(job)});
    }
    cv_.notify_all();
  }
  void all_reduce_sum(float* data, size_t n) override {
    wait();
    all_reduce(data, n, padded_, chunk_);
  }
  void all_reduce_sum_start(float* data, size_t n) override {
    if (!async_ok_) return all_reduce_sum(data, n);
    {
      std::lock_guard<std::mutex> l(mu_);
      if (!worker_.joinable()) worker_ = std::thread([this] { work(); });
      jobs_.push_back({data, n, nullptr});
    }
    cv_.notify_all();
  }
  void wait() override {
    std::unique_lock<std::mutex> l(mu_);
    done_cv_.wait(l, [&] { return jobs_.empty() && !busy_; });
    if (error_) {
      std::exception_ptr e = error_;
      error_ = nullptr;
      std::rethrow_exception(e);
    }
  }

 private:
  void reduce_scatter(const float* in, float* out, size_t n) {
    const size_t N = (size_t)size_;
    if (n % N != 0) fail("reduce_scatter: {} elements do not split over {} ranks", n, N);
    const size_t c = n / N;
    // Rank r receives every rank's chunk r, then sums them in rank order (deterministic).
    pieces(c, [&](size_t off, int cnt) {
      std::vector<float> sendbuf((size_t)cnt * N), recvbuf((size_t)cnt * N);
      for (size_t j = 0; j < N; j++) std::memcpy(&sendbuf[j * cnt], in + j * c + off, (size_t)cnt * 4);
      check(MPI_Alltoall(sendbuf.data(), cnt, MPI_FLOAT, recvbuf.data(), cnt, MPI_FLOAT, comm_), "alltoall");
      for (int i = 0; i < cnt; i++) {
        float s = recvbuf[(size_t)i];
        for (size_t r = 1; r < N; r++) s += recvbuf[r * cnt + i];
        out[off + i] = s;
      }
    });
    bytes_sent += (N - 1) * c * 4, bytes_received += (N - 1) * c * 4;
  }
  void gather(const float* in, float* out, size_t n) {
    const size_t N = (size_t)size_;
    if (n > (size_t)INT_MAX) {  // piecewise, then reordered into rank blocks
      for (size_t off = 0; off < n; off += (size_t)INT_MAX / 2) {
        const size_t cnt = std::min((size_t)INT_MAX / 2, n - off);
        std::vector<float> buf(cnt * N);
        check(MPI_Allgather(in + off, (int)cnt, MPI_FLOAT, buf.data(), (int)cnt, MPI_FLOAT, comm_), "allgather");
        for (size_t r = 0; r < N; r++) std::memcpy(out + r * n + off, &buf[r * cnt], cnt * 4);
      }
    } else {
      check(MPI_Allgather(in, (int)n, MPI_FLOAT, out, (int)n, MPI_FLOAT, comm_), "allgather");
    }
    bytes_sent += (N - 1) * n * 4, bytes_received += (N - 1) * n * 4;
  }
  void all_reduce(float* data, size_t n, std::vector<float>& padded, std::vector<float>& chunk) {
    const size_t N = (size_t)size_, c = (n + N - 1) / N;
    padded.assign(c * N, 0.f);
    std::memcpy(padded.data(), data, n * 4);
    chunk.resize(c);
    reduce_scatter(padded.data(), chunk.data(), c * N);
    gather(chunk.data(), padded.data(), c);
    std::memcpy(data, padded.data(), n * 4);
  }
  // The communication thread: started reductions, in order, with its own buffers.
  void work() {
    std::vector<float> padded, chunk;
    std::unique_lock<std::mutex> l(mu_);
    for (;;) {
      cv_.wait(l, [&] { return stop_ || !jobs_.empty(); });
      if (jobs_.empty()) return;
      const Job j = jobs_.front();
      jobs_.pop_front();
      busy_ = true;
      l.unlock();
      std::exception_ptr err;
      try {
        if (!error_) {
          if (j.fn) j.fn();
          else all_reduce(j.data, j.n, padded, chunk);
        }
      } catch (...) {
        err = std::current_exception();
      }
      l.lock();
      busy_ = false;
      if (err && !error_) error_ = err;
      done_cv_.notify_all();
    }
  }

 public:
  void broadcast(void* data, size_t bytes, int root) override {
    wait();
    pieces(bytes, [&](size_t off, int cnt) {
      check(MPI_Bcast(static_cast<char*>(data) + off, cnt, MPI_BYTE, root, comm_), "broadcast");
    });
    if (rank_ == root) bytes_sent += bytes * (size_t)(size_ - 1);
    else bytes_received += bytes;
  }
  void send(const void* data, size_t bytes, int peer, int tag) override {
    wait();
    pieces(bytes, [&](size_t off, int cnt) {
      check(MPI_Send(static_cast<const char*>(data) + off, cnt, MPI_BYTE, peer, tag, comm_), "send");
    });
    bytes_sent += bytes;
  }
  void recv(void* data, size_t bytes, int peer, int tag) override {
    wait();
    pieces(bytes, [&](size_t off, int cnt) {
      check(MPI_Recv(static_cast<char*>(data) + off, cnt, MPI_BYTE, peer, tag, comm_, MPI_STATUS_IGNORE),
            "recv");
    });
    bytes_received += bytes;
  }
  void barrier() override {
    wait();
    check(MPI_Barrier(comm_), "barrier");
  }
  std::unique_ptr<Communicator> split(int color, int key) override {
    wait();
    return std::make_unique<MpiComm>(*this, color, key);
  }
  void isend(const void* data, size_t bytes, int peer, int tag) override {
    wait();
    pieces(bytes, [&](size_t off, int cnt) {
      MPI_Request r;
      check(MPI_Isend(static_cast<const char*>(data) + off, cnt, MPI_BYTE, peer, tag, comm_, &r), "isend");
      sends_.push_back(r);
    });
    bytes_sent += bytes;
  }
  void wait_sends() override {
    if (sends_.empty()) return;
    check(MPI_Waitall((int)sends_.size(), sends_.data(), MPI_STATUSES_IGNORE), "wait for sends");
    sends_.clear();
  }
  size_t recv_any(std::vector<char>& buf, size_t max_bytes, int peer, int tag) override {
    wait();
    MPI_Status st;
    check(MPI_Probe(peer, tag, comm_, &st), "probe");
    MPI_Count n = 0;
    check(MPI_Get_elements_x(&st, MPI_BYTE, &n), "get_count");
    if (n < 0 || (size_t)n > max_bytes || n > INT_MAX)
      fail("a message of {} bytes from rank {} (tag {}), more than the {} expected", (long long)n, peer, tag, max_bytes);
    buf.resize((size_t)n);
    check(MPI_Recv(buf.data(), (int)n, MPI_BYTE, peer, tag, comm_, MPI_STATUS_IGNORE), "recv");
    bytes_received += (size_t)n;
    return (size_t)n;
  }

 private:
  bool async_ok_ = false;
  std::string host_;
  int rank_ = 0, size_ = 1;
  MPI_Comm comm_ = MPI_COMM_NULL;
  bool owner_ = false;  // the world: initialises and finalises MPI
  std::vector<MPI_Request> sends_;  // isend's, until wait_sends
  std::vector<float> padded_, chunk_;
  struct Job {
    float* data;
    size_t n;
    std::function<void()> fn;  // a started job; else an all-reduce of (data, n)
  };
  bool on_worker() const { return worker_.joinable() && std::this_thread::get_id() == worker_.get_id(); }
  bool stop_ = false, busy_ = false;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::deque<Job> jobs_;
  std::exception_ptr error_;
  std::thread worker_;
};
}  // namespace

std::unique_ptr<Communicator> make_mpi_comm() { return std::make_unique<MpiComm>(); }

void mpi_abort(int code) {
  int inited = 0, fin = 0;
  MPI_Initialized(&inited);
  MPI_Finalized(&fin);
  if (inited && !fin) MPI_Abort(MPI_COMM_WORLD, code);
}

}  // namespace llmq::dist
#endif
