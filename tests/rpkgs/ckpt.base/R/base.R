base_value <- function() 41L
