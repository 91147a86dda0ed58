"""Paths of the C library shipped in the wheel (see fastnn.config)."""
import os


def get_library_dir():
    """The folder holding libfastnn.so (str): the installed package's folder."""
    from . import _kernels
    return os.path.dirname(os.path.abspath(_kernels.__file__))


def get_include():
    """The folder to put on the include path (str): it holds fastnn/fastnn_api.h."""
    return os.path.join(get_library_dir(), "include")


def get_cmake_dir():
    """The folder of fastnnConfig.cmake, for find_package(fastnn) (str)."""
    return os.path.join(get_library_dir(), "lib", "cmake", "fastnn")


def get_pkgconfig_dir():
    """The folder of fastnn.pc (str)."""
    return os.path.join(get_library_dir(), "lib", "pkgconfig")


def cflags():
    return f"-I{get_include()}"


def libs():
    d = get_library_dir()
    return f"-L{d} -Wl,-rpath,{d} -lfastnn"
