c_add <- function(a, b) .Call(C_add, as.integer(a), as.integer(b))
