// copyloops.cc — the bench's other ways to move a file into a memfd, each a plain loop over one syscall.
// Synchronous on purpose: called only from the bench's child processes, which do nothing else.
#include <fcntl.h>
#include <sys/sendfile.h>
#include <unistd.h>

#include <algorithm>

#include "args.h"

namespace dmaload {

namespace {

// copyLoop(method, in, out, length, pipeSize) -> bytes | -errno. method: 0 sendfile, 1 splice through a pipe,
// 2 copy_file_range.
Napi::Value CopyLoop(const Napi::CallbackInfo& info) {
  Args a(info, "copyLoop");
  int method, in, out, pipeSize;
  uint64_t ulen;
  if (!a.I32(a[0], "method", method, 0, 2) || !a.Fd(a[1], "inFd", in) || !a.Fd(a[2], "outFd", out) || !a.U64(a[3], "length", ulen) ||
      !a.I32(a[4], "pipeSize", pipeSize, 1, INT32_MAX))
    return {};
  int64_t len = static_cast<int64_t>(ulen);
  int64_t done = 0;
  int pfd[2] = {-1, -1};
  if (method == 1) {
    if (pipe2(pfd, O_CLOEXEC) < 0) return Num(a.env, static_cast<double>(Err()));
    fcntl(pfd[1], F_SETPIPE_SZ, pipeSize);  // best effort: a smaller pipe only means more calls
  }
  int64_t err = 0;
  while (done < len) {
    size_t want = static_cast<size_t>(std::min<int64_t>(len - done, 1 << 30));
    ssize_t n;
    loff_t inOff = done, outOff = done;
    if (method == 0) {
      off_t o = done;
      n = sendfile(out, in, &o, want);
    } else if (method == 2) {
      n = copy_file_range(in, &inOff, out, &outOff, want, 0);
    } else {
      n = splice(in, &inOff, pfd[1], nullptr, std::min<size_t>(want, static_cast<size_t>(pipeSize)), SPLICE_F_MOVE);
      if (n > 0) {
        for (ssize_t left = n; left > 0;) {
          ssize_t m = splice(pfd[0], nullptr, out, &outOff, static_cast<size_t>(left), SPLICE_F_MOVE);
          if (m < 0 && errno == EINTR) continue;
          if (m <= 0) {
            n = m < 0 ? -1 : 0;
            break;
          }
          left -= m;
        }
      }
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      err = Err();
      break;
    }
    if (n == 0) break;
    done += n;
  }
  if (pfd[0] >= 0) close(pfd[0]);
  if (pfd[1] >= 0) close(pfd[1]);
  return Num(a.env, static_cast<double>(err ? err : done));
}

}  // namespace

void InitCopyLoops(Napi::Env env, Napi::Object exports) { exports.Set("copyLoop", Napi::Function::New(env, CopyLoop, "copyLoop")); }

}  // namespace dmaload
