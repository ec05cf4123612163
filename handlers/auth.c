/* Auth service: placeholder bodies while the feature is built. */
#include "lagoon_handlers.h"

int handle_Auth_Register(rpc_call *call, const lagoon_v1_RegisterRequest *req, lagoon_v1_UserProfile *resp)
{
    (void)call;
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not implemented yet");
}

int handle_Auth_Login(rpc_call *call, const lagoon_v1_LoginRequest *req, lagoon_v1_TokenPair *resp)
{
    (void)call;
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not implemented yet");
}

int handle_Auth_Refresh(rpc_call *call, const lagoon_v1_RefreshRequest *req, lagoon_v1_TokenPair *resp)
{
    (void)call;
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not implemented yet");
}

int handle_Auth_Logout(rpc_call *call, const lagoon_v1_AuthEmpty *req, lagoon_v1_AuthEmpty *resp)
{
    (void)call;
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not implemented yet");
}

int handle_Auth_LogoutAll(rpc_call *call, const lagoon_v1_AuthEmpty *req, lagoon_v1_AuthEmpty *resp)
{
    (void)call;
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not implemented yet");
}

int handle_Auth_Me(rpc_call *call, const lagoon_v1_AuthEmpty *req, lagoon_v1_UserProfile *resp)
{
    (void)call;
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not implemented yet");
}

int handle_Auth_VerifyEmail(rpc_call *call, const lagoon_v1_VerifyEmailRequest *req, lagoon_v1_AuthEmpty *resp)
{
    (void)call;
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not implemented yet");
}

int handle_Auth_ResendVerification(rpc_call *call, const lagoon_v1_AuthEmpty *req, lagoon_v1_AuthEmpty *resp)
{
    (void)call;
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not implemented yet");
}

int handle_Auth_ForgotPassword(rpc_call *call, const lagoon_v1_ForgotPasswordRequest *req, lagoon_v1_AuthEmpty *resp)
{
    (void)call;
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not implemented yet");
}

int handle_Auth_ResetPassword(rpc_call *call, const lagoon_v1_ResetPasswordRequest *req, lagoon_v1_AuthEmpty *resp)
{
    (void)call;
    (void)req;
    (void)resp;
    return rpc_call_error(call, LAGOON_UNIMPLEMENTED, "not implemented yet");
}
