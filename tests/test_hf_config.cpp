#include <catch2/catch.hpp>
// tests arrive with their owner
