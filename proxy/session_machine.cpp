#include "proxy/session_machine.h"

#include "protocol/backend.h"

namespace pghandoff::proxy {

const char* toString(SessionState s) {
  switch (s) {
    case SessionState::kStartup:
      return "startup";
    case SessionState::kAuthenticating:
      return "authenticating";
    case SessionState::kConnecting:
      return "connecting";
    case SessionState::kIdle:
      return "idle";
    case SessionState::kBusy:
      return "busy";
    case SessionState::kCopyIn:
      return "copy-in";
    case SessionState::kCopyOut:
      return "copy-out";
    case SessionState::kCopyBoth:
      return "copy-both";
    case SessionState::kClosing:
      return "closing";
    case SessionState::kClosed:
      return "closed";
  }
  return "?";
}

void SessionMachine::settle() {
  if (inCopy() || state_ == SessionState::kClosing || state_ == SessionState::kClosed) return;
  transition(pendingReady_ > 0 ? SessionState::kBusy : SessionState::kIdle);
}

ClientVerdict SessionMachine::onClientFrame(char type) {
  switch (type) {
    case 'Q':  // Query
    case 'S':  // Sync
    case 'F':  // FunctionCall
      ++pendingReady_;
      settle();
      break;
    case 'X':  // Terminate
      transition(SessionState::kClosing);
      return ClientVerdict::kForwardThenClose;
    case 'c':  // CopyDone
    case 'f':  // CopyFail
      // The server answers with CommandComplete/ErrorResponse and then the
      // ReadyForQuery of the Query (or Sync) that started the COPY.
      if (state_ == SessionState::kCopyIn || state_ == SessionState::kCopyBoth) {
        state_ = SessionState::kBusy;
        settle();
      }
      break;
    default:
      // Parse, Bind, Describe, Execute, Close, Flush, CopyData: no state change
      // until the server answers. CopyData outside COPY is forwarded and the
      // server rejects it, as it would without a proxy (B43).
      break;
  }
  return ClientVerdict::kForward;
}

ServerVerdict SessionMachine::onServerFrame(char type, protocol::Bytes body) {
  switch (type) {
    case 'Z': {  // ReadyForQuery
      auto status = protocol::decodeReadyForQueryBody(body);
      if (!status || pendingReady_ == 0) return ServerVerdict::kOutOfSync;
      txStatus_ = *status;
      --pendingReady_;
      if (inCopy()) state_ = SessionState::kBusy;  // COPY ended by an error
      settle();
      break;
    }
    case 'G':  // CopyInResponse
      transition(SessionState::kCopyIn);
      break;
    case 'H':  // CopyOutResponse
      transition(SessionState::kCopyOut);
      break;
    case 'W':  // CopyBothResponse
      transition(SessionState::kCopyBoth);
      break;
    case 'c':  // CopyDone from the server ends COPY OUT
      if (state_ == SessionState::kCopyOut) {
        state_ = SessionState::kBusy;
        settle();
      }
      break;
    case 'E':  // ErrorResponse: during COPY IN the server gives up on the COPY
      if (state_ == SessionState::kCopyIn || state_ == SessionState::kCopyOut) {
        state_ = SessionState::kBusy;
        settle();
      }
      break;
    default:
      break;
  }
  return ServerVerdict::kForward;
}

}  // namespace pghandoff::proxy
