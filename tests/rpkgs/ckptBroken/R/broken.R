broken <- function( {
