#include <R.h>
#include <Rinternals.h>
#include <R_ext/Rdynload.h>

static SEXP add(SEXP a, SEXP b)
{
    return ScalarInteger(asInteger(a) + asInteger(b));
}

static const R_CallMethodDef calls[] = {
    {"C_add", (DL_FUNC) &add, 2},
    {NULL, NULL, 0}
};

void R_init_ckptC(DllInfo *dll)
{
    R_registerRoutines(dll, NULL, calls, NULL, NULL);
    R_useDynamicSymbols(dll, FALSE);
    R_forceSymbols(dll, TRUE);
}
