"""Where the C library shipped in the wheel lives, for C, C++, Rust or Go builds::

    gcc prog.c $(python -m fastnn.config --cflags --libs)   # runs without LD_LIBRARY_PATH
    cmake -Dfastnn_DIR="$(python -m fastnn.config --cmakedir)" ...   # find_package(fastnn)
    PKG_CONFIG_PATH="$(python -m fastnn.config --pkgconfigdir)" pkg-config --cflags --libs fastnn

The library is ``libfastnn.so`` (the stable ABI of ``fastnn/fastnn_api.h``; the Python
extension runs on the same file), next to the compiled extension in the installed package.
"""
import argparse
import sys


from ._paths import (cflags, get_cmake_dir, get_include, get_library_dir,  # noqa: F401
                     get_pkgconfig_dir, libs)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m fastnn.config",
        description="Print the flags that build a program against fastnn's C library.")
    parser.add_argument("--cflags", action="store_true", help="compiler flags (-I...)")
    parser.add_argument("--libs", action="store_true",
                        help="linker flags (-L... -Wl,-rpath,... -lfastnn)")
    parser.add_argument("--includedir", action="store_true", help="the include folder")
    parser.add_argument("--libdir", action="store_true", help="the folder of libfastnn.so")
    parser.add_argument("--cmakedir", action="store_true", help="the folder of fastnnConfig.cmake")
    parser.add_argument("--pkgconfigdir", action="store_true", help="the folder of fastnn.pc")
    parser.add_argument("--version", action="store_true", help="the package version")
    args = parser.parse_args(argv)
    out = []
    if args.version:
        from . import __version__
        out.append(__version__)
    if args.cflags:
        out.append(cflags())
    if args.libs:
        out.append(libs())
    for flag, fn in (("includedir", get_include), ("libdir", get_library_dir),
                     ("cmakedir", get_cmake_dir), ("pkgconfigdir", get_pkgconfig_dir)):
        if getattr(args, flag):
            out.append(fn())
    if not out:
        parser.print_help(sys.stderr)
        return 2
    print(" ".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
