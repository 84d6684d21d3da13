// Staged files and their removal on a signal.
#include <qforge/io/staged_file.hpp>

#include <qforge/io/safetensors.hpp>  // io_error

#include <array>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <system_error>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

namespace qforge {

namespace {

// The paths remove_staged_files() removes. A signal handler may read the table at any moment, so
// it holds fixed buffers and a state per slot: a path is complete before its slot reads `live`,
// and the slot leaves `live` before the path is touched again. A path that does not fit (or a
// full table) is still removed by its destructor, only not on a signal.
enum slot_state : int { free_slot, busy, live_file, live_directory };
struct slot {
    std::atomic<int> state{free_slot};
    std::array<char, 4096> path{};
};
constexpr std::size_t slot_count = 1024;
std::array<slot, slot_count> slots;

int claim(const std::filesystem::path& p, slot_state kind) {
    const std::string& text = p.native();
    if (text.size() >= slot{}.path.size()) return -1;
    for (std::size_t i = 0; i < slot_count; ++i) {
        int expected = free_slot;
        if (slots[i].state.compare_exchange_strong(expected, busy, std::memory_order_acquire)) {
            std::memcpy(slots[i].path.data(), text.c_str(), text.size() + 1);
            slots[i].state.store(kind, std::memory_order_release);
            return static_cast<int>(i);
        }
    }
    return -1;
}

void release(int& i) {
    if (i >= 0) slots[static_cast<std::size_t>(i)].state.store(free_slot, std::memory_order_release);
    i = -1;
}

std::string errno_text(int err) { return std::system_category().message(err); }


std::atomic<unsigned> counter{0};

extern "C" void remove_and_reraise(int sig) {
    remove_staged_files();
    std::signal(sig, SIG_DFL);  // SA_RESETHAND did so already; kept for clarity
    std::raise(sig);            // delivered with the default action when the handler returns
}

}  // namespace

void remove_staged_files() noexcept {
    for (const slot_state kind : {live_file, live_directory})
        for (slot& s : slots)
            if (s.state.load(std::memory_order_acquire) == kind)
                kind == live_file ? (void)::unlink(s.path.data()) : (void)::rmdir(s.path.data());
}

void remove_staged_files_on_signals() {
    for (const int sig : {SIGINT, SIGTERM, SIGHUP}) {
        struct sigaction old {};
        if (::sigaction(sig, nullptr, &old) != 0 || old.sa_handler != SIG_DFL) continue;  // the application's own
        struct sigaction action {};
        action.sa_handler = remove_and_reraise;
        action.sa_flags = SA_RESETHAND;
        sigemptyset(&action.sa_mask);
        ::sigaction(sig, &action, nullptr);
    }
}

// ---- staged_file -----------------------------------------------------------------------------

staged_file::staged_file(std::filesystem::path target) : target_(std::move(target)) {
    if (!target_.has_filename()) throw io_error("output '" + target_.string() + "' names no file");
    path_ = target_.parent_path() / ("." + target_.filename().string() + ".qforge-" + std::to_string(::getpid()) + "-" +
                                     std::to_string(counter++) + ".tmp");
    slot_ = claim(path_, live_file);  // before the file exists: a signal in between removes nothing
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd_ < 0) {
        const int err = errno;
        release(slot_);
        fail("cannot create the temporary file", err);
    }
}

staged_file::~staged_file() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(path_.c_str());
    release(slot_);
}

void staged_file::fail(const std::string& what, int err, const std::string* tensor, std::uint64_t at) const {
    std::string m = "cannot write '" + target_.string() + "': ";
    if (tensor) m += "tensor '" + *tensor + "': ";
    throw io_error(m + what + ": " + errno_text(err) + " (byte offset " +
                   std::to_string(at == ~std::uint64_t{0} ? written_ : at) + ")");
}

void staged_file::check_open() const {
    if (fd_ < 0) throw io_error("cannot write '" + target_.string() + "': the file is already finished");
}

void staged_file::write(std::span<const std::byte> data, const std::string* tensor) {
    check_open();
    const std::uint64_t start = written_;
    while (!data.empty()) {
        const std::size_t chunk = std::min(data.size(), staged_file::write_piece);
        const ssize_t n = ::write(fd_, data.data(), chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) fail("write failed", n < 0 ? errno : EIO, tensor);
        written_ += static_cast<std::uint64_t>(n);
        data = data.subspan(static_cast<std::size_t>(n));
    }
    start_writeback(start, written_ - start);
}

void staged_file::write_at(std::uint64_t at, std::span<const std::byte> data, const std::string* tensor) {
    check_open();
    const std::uint64_t start = at, bytes = data.size();
    while (!data.empty()) {
        const std::size_t chunk = std::min(data.size(), staged_file::write_piece);
        const ssize_t n = ::pwrite(fd_, data.data(), chunk, static_cast<off_t>(at));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) fail("write failed", n < 0 ? errno : EIO, tensor, at);
        at += static_cast<std::uint64_t>(n);
        data = data.subspan(static_cast<std::size_t>(n));
    }
    start_writeback(start, bytes);
}

void staged_file::skip(std::uint64_t bytes, const std::string* tensor) {
    check_open();
    written_ += bytes;
    if (::lseek(fd_, static_cast<off_t>(written_), SEEK_SET) < 0) fail("seek failed", errno, tensor);
}

void staged_file::reserve(std::uint64_t bytes) {
    check_open();
    if (bytes == 0) return;
    // Best effort (posix_fallocate would write zeros where it is unsupported): on a full disk the
    // writes that follow fail and name the tensor and the byte offset.
    while (::fallocate(fd_, 0, 0, static_cast<off_t>(bytes)) != 0 && errno == EINTR) {
    }
}

void staged_file::copy_from(int fd, std::uint64_t offset, std::uint64_t size, const std::string* tensor) {
    check_open();
    const std::uint64_t start = written_;
    auto off = static_cast<off_t>(offset);
    while (size > 0) {
        const ssize_t n = ::copy_file_range(fd, &off, fd_, nullptr, std::min<std::uint64_t>(size, std::uint64_t{1} << 30), 0);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)) break;
        if (n <= 0) fail("copy failed", n < 0 ? errno : EIO, tensor);
        written_ += static_cast<std::uint64_t>(n);
        size -= static_cast<std::uint64_t>(n);
    }
    std::vector<std::byte> buf(static_cast<std::size_t>(std::min<std::uint64_t>(size, std::uint64_t{1} << 22)));
    while (size > 0) {  // no kernel copy between these files: through a buffer
        const ssize_t n = ::pread(fd, buf.data(), std::min<std::uint64_t>(size, buf.size()), off);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) fail("read of the source failed", n < 0 ? errno : EIO, tensor);
        write(std::span<const std::byte>(buf.data(), static_cast<std::size_t>(n)), tensor);
        off += n;
        size -= static_cast<std::uint64_t>(n);
    }
    start_writeback(start, written_ - start);
}

// Starts writing the bytes written so far to disk now, without waiting, once a contiguous run of
// them reaches 4 MiB, so that finish()'s fsync waits only for the last pieces instead of the whole
// file: the disk works while the next tensor is computed. (Dequantizing a 361 MB checkpoint spent
// up to a quarter of its time in the final fsync.) Best effort: fsync still reports every error.
void staged_file::start_writeback(std::uint64_t at, std::uint64_t bytes) {
    if (at != unsent_end_) unsent_begin_ = at;  // not after the previous run: fsync sends that one
    unsent_end_ = at + bytes;
    if (unsent_end_ - unsent_begin_ < (std::uint64_t{4} << 20)) return;
    (void)::sync_file_range(fd_, static_cast<off_t>(unsent_begin_), static_cast<off_t>(unsent_end_ - unsent_begin_),
                            SYNC_FILE_RANGE_WRITE);
    unsent_begin_ = unsent_end_;
}

void staged_file::finish() {
    if (fd_ < 0) return;
    if (::fsync(fd_) != 0) fail("fsync failed", errno);
    if (::close(std::exchange(fd_, -1)) != 0) fail("close failed", errno);
}

void staged_file::commit() {
    if (committed_) return;
    finish();
    if (::rename(path_.c_str(), target_.c_str()) != 0) fail("cannot rename the temporary file over the target", errno);
    committed_ = true;
    release(slot_);
    // Makes the rename durable. Best effort: the target is already replaced, so a failure here
    // must not be reported as a failed write.
    const std::filesystem::path dir = target_.has_parent_path() ? target_.parent_path() : ".";
    if (const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); fd >= 0) {
        (void)::fsync(fd);
        ::close(fd);
    }
}

// ---- staged_directory ------------------------------------------------------------------------

staged_directory::staged_directory(std::filesystem::path dir) : dir_(std::move(dir)) {
    slot_ = claim(dir_, live_directory);
    if (::mkdir(dir_.c_str(), 0777) != 0) {
        const int err = errno;
        release(slot_);
        throw io_error("cannot create the output directory '" + dir_.string() + "': " + errno_text(err));
    }
}

staged_directory::~staged_directory() {
    if (!committed_) ::rmdir(dir_.c_str());  // only if empty
    release(slot_);
}

void staged_directory::commit() {
    committed_ = true;
    release(slot_);
}

}  // namespace qforge
