// A one-line progress bar on stderr for long runs, drawn only when stderr is a terminal (so
// logs and pipes stay clean).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace qforge::cli {

class progress {
public:
    // `total` units of work (e.g. bytes of input tensors).
    progress(std::string label, std::uint64_t total);
    ~progress();  // erases the bar
    progress(const progress&) = delete;
    progress& operator=(const progress&) = delete;

    // `units` more are done; `item` names what is being worked on next (or was just finished).
    void advance(std::uint64_t units, std::string_view item);

private:
    void draw(std::string_view item);

    bool enabled_;
    std::string label_;
    std::uint64_t total_, done_ = 0;
    std::chrono::steady_clock::time_point start_, last_draw_{};
};

}  // namespace qforge::cli
