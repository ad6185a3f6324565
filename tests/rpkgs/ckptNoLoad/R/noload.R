noload <- function() TRUE
.onLoad <- function(libname, pkgname) stop("libckpt.so.1: cannot open shared object file")
