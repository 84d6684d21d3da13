// implemented by its owner; see include/qforge/reference/layouts.hpp
