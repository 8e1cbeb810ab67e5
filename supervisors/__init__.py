"""supervisors: Erlang/OTP supervision trees for Pykka actors."""
