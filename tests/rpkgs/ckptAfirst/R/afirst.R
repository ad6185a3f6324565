afirst_value <- function() imports_value() * 2L
