-- The token server of the DICOMweb tests: every HTTP request must carry this bearer token (Orthanc
-- answers 403 otherwise), and DICOM SR instances are refused on arrival (filtered out; the DICOMweb plugin
-- still answers the STOW-RS request as a success), so that a push of a SEG + SR
-- pair fails halfway on a real server.
TOKEN = 'pacs-test-token'

function IncomingHttpRequestFilter(method, uri, ip, username, httpHeaders)
  return httpHeaders['authorization'] == 'Bearer ' .. TOKEN
end

function ReceivedInstanceFilter(dicom, origin, info)
  return dicom.Modality ~= 'SR'
end
