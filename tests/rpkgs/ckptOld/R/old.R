old_version <- function() as.character(utils::packageVersion("ckptOld"))
