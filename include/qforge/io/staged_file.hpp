// Files written under a temporary name beside their target and renamed into place only when
// complete, so that a reader never sees half a file, and a failure or an interruption leaves
// nothing behind.
//
// A staged file is `.<target name>.qforge-<pid>-<n>.tmp` in the target's directory. Until commit()
// it is removed by the destructor (an exception, a failed write) and by remove_staged_files(),
// which is async-signal-safe: remove_staged_files_on_signals() installs SIGINT / SIGTERM / SIGHUP
// handlers that call it and then let the signal end the process as before. Every error is an
// io_error naming the target (the path the caller asked for) and the byte offset reached.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>

namespace qforge {

class staged_file {
public:
    // Data goes to the file in write()s of at most 256 KiB. One large write makes the page cache
    // allocate large folios, which on a virtual machine often come from memory the host has taken
    // back (free page reporting hands it only blocks of 2 MiB and more): filling them then costs a
    // host fault per page. On the 2-core test VM, 361 MB in four 90 MB writes took 0.12-2.2 s, the
    // same in 256 KiB pieces 0.08-0.19 s, `cp` 0.13-0.28 s (docs/checkpoint-io.md).
    static constexpr std::size_t write_piece = std::size_t{256} << 10;

    explicit staged_file(std::filesystem::path target);
    staged_file(const staged_file&) = delete;
    staged_file& operator=(const staged_file&) = delete;
    ~staged_file();

    // Appends data; `tensor` names what is being written, for messages.
    void write(std::span<const std::byte> data, const std::string* tensor = nullptr);
    // Writes data at byte `at`, leaving the append position alone (regions skipped before).
    void write_at(std::uint64_t at, std::span<const std::byte> data, const std::string* tensor = nullptr);
    // Moves the append position `bytes` ahead, over a region that write_at fills later.
    void skip(std::uint64_t bytes, const std::string* tensor = nullptr);
    // Allocates the file's blocks for its first `bytes` now (fallocate, best effort), so that the
    // writes only fill blocks. Without it, ext4 allocates blocks as the writes come, under a lock
    // that the completion of earlier writes to disk also takes: the writer stalled for
    // milliseconds at a time (docs/checkpoint-io.md).
    void reserve(std::uint64_t bytes);
    // Appends `size` bytes of the open file `fd` from `offset`, copied in the kernel where it can.
    void copy_from(int fd, std::uint64_t offset, std::uint64_t size, const std::string* tensor = nullptr);
    // fsync and close: the temporary file is complete (and can be read back at temporary_path()).
    void finish();
    // finish() if not done, rename over the target, fsync the directory (best effort).
    void commit();

    const std::filesystem::path& target() const { return target_; }
    const std::filesystem::path& temporary_path() const { return path_; }

private:
    std::filesystem::path target_, path_;
    int fd_ = -1;
    int slot_ = -1;  // in the table remove_staged_files() walks, or -1
    bool committed_ = false;
    std::uint64_t written_ = 0;
    std::uint64_t unsent_begin_ = 0, unsent_end_ = 0;  // written, not yet sent to the disk (start_writeback)

    [[noreturn]] void fail(const std::string& what, int err, const std::string* tensor = nullptr,
                           std::uint64_t at = ~std::uint64_t{0}) const;
    void check_open() const;
    void start_writeback(std::uint64_t at, std::uint64_t bytes);
};

// A directory created for outputs, removed again (when empty) unless committed; also by
// remove_staged_files().
class staged_directory {
public:
    explicit staged_directory(std::filesystem::path dir);  // creates it
    staged_directory(const staged_directory&) = delete;
    staged_directory& operator=(const staged_directory&) = delete;
    ~staged_directory();
    void commit();

private:
    std::filesystem::path dir_;
    int slot_ = -1;
    bool committed_ = false;
};

// Removes every staged file, then every staged directory, of the process. Async-signal-safe.
void remove_staged_files() noexcept;
// For SIGINT, SIGTERM and SIGHUP, when their handler is the default one: a handler that calls
// remove_staged_files() and re-raises the signal with the default action.
void remove_staged_files_on_signals();

}  // namespace qforge
