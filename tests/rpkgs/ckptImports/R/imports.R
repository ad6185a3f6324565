imports_value <- function() base_value() + 1L
