"""External toolchains quantkit drives (llama.cpp)."""
