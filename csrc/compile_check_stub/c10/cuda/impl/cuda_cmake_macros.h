// Stand-in for the header that only CUDA builds of torch generate; used by csrc/compile_check.py alone.
#pragma once
