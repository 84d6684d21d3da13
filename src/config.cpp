#include <qforge/config/name.hpp>

#include <charconv>
#include <string>
#include <vector>

namespace qforge {

const config& validate(const config& c) {
    const config_rule r = check(c);
    if (r == config_rule::ok) return c;
    const rule_text t = describe(r);
    throw config_error_exception(
        r, "invalid config field '" + std::string(t.field) + "': " + std::string(t.message) + " (" +
               std::to_string(static_cast<int>(c.bits)) + "-bit " + std::string(to_string(c.type)) + ", group " +
               std::to_string(c.group) + ", storage " + std::string(to_string(c.storage)) + ", act " +
               std::string(to_string(c.act)) + (c.double_quant ? ", double quant)" : ")"));
}

namespace {

constexpr std::string_view group_prefix(grouping g) {
    switch (g) {
        case grouping::flat_block: return "b";
        case grouping::tile: return "t";
        default: return "g";
    }
}

std::string type_token(const config& c) {
    if (c.type == dtype::int_sym || c.type == dtype::int_asym)
        return std::string("int").append(std::to_string(c.bits)).append(to_string(c.type));
    return std::string(to_string(c.type));
}

std::string group_token(const config& c) {
    if (c.group == per_channel) return "pc";
    if (c.group == per_tensor) return "pt";
    return std::string(group_prefix(grouping_of(c.storage))) + std::to_string(c.group);
}

[[noreturn]] void bad_name(std::string_view name, std::string_view why) {
    throw std::invalid_argument("bad config name '" + std::string(name) + "': " + std::string(why));
}

int parse_int(std::string_view s, std::string_view name, std::string_view what) {
    int v = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc{} || end != s.data() + s.size() || s.empty()) bad_name(name, what);
    return v;
}

}  // namespace

std::string canonical_name(const config& c) {
    validate(c);
    std::string n = type_token(c) + "_" + group_token(c);
    if (c.double_quant) n += "_dq";
    n += "_" + std::string(to_string(c.storage)) + "_" + std::string(to_string(c.act));
    return n;
}

config parse_name(std::string_view name) {
    std::vector<std::string_view> parts;
    for (std::size_t start = 0;;) {
        const std::size_t end = name.find('_', start);
        parts.push_back(name.substr(start, end - start));
        if (end == std::string_view::npos) break;
        start = end + 1;
    }
    if (parts.size() != 4 && parts.size() != 5) bad_name(name, "expected <type>_<group>[_dq]_<storage>_<act>");
    config c{};
    c.double_quant = parts.size() == 5;
    if (c.double_quant && parts[2] != "dq") bad_name(name, "the optional third part must be 'dq'");

    const std::string_view type = parts[0];
    if (type.starts_with("int") && type != "int8row") {
        const std::size_t letters = type.find_first_not_of("0123456789", 3);
        if (letters == std::string_view::npos) bad_name(name, "integer type needs 'sym' or 'asym'");
        c.bits = static_cast<std::uint8_t>(parse_int(type.substr(3, letters - 3), name, "integer type needs bits"));
        const std::string_view kind = type.substr(letters);
        if (kind == "sym") c.type = dtype::int_sym;
        else if (kind == "asym") c.type = dtype::int_asym;
        else bad_name(name, "integer type must end in 'sym' or 'asym'");
    } else {
        const auto t = from_token(dtype_tokens, type);
        if (!t || *t == dtype::int_sym || *t == dtype::int_asym) bad_name(name, "unknown type '" + std::string(type) + "'");
        c.type = *t;
        c.bits = (c.type == dtype::int8_row || is_fp8(c.type)) ? 8 : 4;
    }

    const auto storage = from_token(layout_tokens, parts[parts.size() - 2]);
    if (!storage) bad_name(name, "unknown storage '" + std::string(parts[parts.size() - 2]) + "'");
    c.storage = *storage;
    const auto act = from_token(compute_tokens, parts.back());
    if (!act) bad_name(name, "unknown act '" + std::string(parts.back()) + "'");
    c.act = *act;

    const std::string_view group = parts[1];
    if (group == "pc") c.group = per_channel;
    else if (group == "pt") c.group = per_tensor;
    else {
        const std::string_view prefix = group_prefix(grouping_of(c.storage));
        if (!group.starts_with(prefix))
            bad_name(name, "group of storage '" + std::string(to_string(c.storage)) + "' is written " +
                               std::string(prefix) + "<size>");
        c.group = parse_int(group.substr(1), name, "group size must be a number");
    }
    validate(c);
    if (canonical_name(c) != name) bad_name(name, "not in canonical form");
    return c;
}

}  // namespace qforge
