gone <- function() TRUE
