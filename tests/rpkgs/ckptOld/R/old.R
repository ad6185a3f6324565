old_version <- function() utils::packageDescription("ckptOld")$Version
