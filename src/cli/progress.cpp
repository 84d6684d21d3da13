#include "progress.hpp"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <utility>

namespace qforge::cli {

namespace {

constexpr auto redraw_interval = std::chrono::milliseconds(100);

std::size_t terminal_width() {
    winsize ws{};
    if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
    return 80;
}

}  // namespace

progress::progress(std::string label, std::uint64_t total)
    : enabled_(::isatty(STDERR_FILENO) == 1), label_(std::move(label)), total_(total),
      start_(std::chrono::steady_clock::now()) {}

progress::~progress() {
    if (enabled_ && last_draw_ != std::chrono::steady_clock::time_point{}) {
        std::fputs("\r\x1b[K", stderr);  // carriage return, erase to the end of the line
        std::fflush(stderr);
    }
}

void progress::advance(std::uint64_t units, std::string_view item) {
    done_ = std::min(total_, done_ + units);
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    if (now - last_draw_ < redraw_interval && done_ < total_) return;
    last_draw_ = now;
    draw(item);
}

void progress::draw(std::string_view item) {
    constexpr std::size_t bar_width = 30;
    const double fraction = total_ == 0 ? 1.0 : static_cast<double>(done_) / static_cast<double>(total_);
    const auto filled = static_cast<std::size_t>(fraction * bar_width);
    std::string line = label_ + " [" + std::string(filled, '#') + std::string(bar_width - filled, '.') + "] ";
    char percent[8];
    std::snprintf(percent, sizeof percent, "%3d%% ", static_cast<int>(fraction * 100.0));
    line += percent;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    if (seconds > 0.0) {  // input read so far, per second
        char rate[32];
        std::snprintf(rate, sizeof rate, "%.0f MB/s ", static_cast<double>(done_) / seconds / 1e6);
        line += rate;
    }
    line += item;
    const std::size_t width = terminal_width();
    if (line.size() >= width) line.resize(width - 1);  // never wrap: \r must return to this line
    std::fprintf(stderr, "\r%s\x1b[K", line.c_str());
    std::fflush(stderr);
}

}  // namespace qforge::cli
